//! The keys allowed to sign commands, `/etc/berrygw/authorized_keys`, each with the targets
//! and commands it may use. Parsed strictly (every error names file, line and key) and
//! refused outright if anyone but its owner may write it: whoever can edit it can authorize
//! himself to move equipment. It holds only public keys, so reading is not restricted.
//!
//! ```toml
//! [[key]]
//! id = "central-2026"
//! public_key = "base64 of the 32-byte Ed25519 public key"
//! targets = ["barrage-*", "armoire-ep-rue-haute"]   # glob: `*` matches any run of characters
//! commands = ["move_bay*", "stop_bay*"]             # ["*"] for all
//! comment = "plateforme centrale, clé 2026"          # optional
//!
//! [[key]]
//! id = "central-config"
//! public_key = "…"
//! bundles = ["devices", "codecs", "rules"]   # kinds of file it may sign in a bundle
//! ```
//!
//! `bundles` (optional, none by default) is the scope for configuration bundles
//! (`crate::bundle`): `devices`, `codecs`, `rules`, `authorized_keys`. Only a key with
//! `authorized_keys` in it can change this file remotely, so a command key cannot give
//! itself more scope. A key with `bundles` may leave out `targets` and `commands`
//! (then it signs no command).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use berrygw_core::{locate, ConfigError};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use toml::Spanned;

use crate::site::Kind;
use crate::MAX_NAME_BYTES;

/// Every authorized key, checked.
#[derive(Clone, Debug)]
pub struct AuthorizedKeys {
    path: PathBuf,
    keys: Vec<AuthorizedKey>,
    by_id: HashMap<String, usize>,
}

/// One key and its scope.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorizedKey {
    /// What envelopes name it by (`key_id`).
    pub id: String,
    pub public_key: VerifyingKey,
    /// Globs over target names.
    pub targets: Vec<String>,
    /// Globs over command names.
    pub commands: Vec<String>,
    /// The kinds of file it may sign in a configuration bundle.
    pub bundles: Vec<Kind>,
    pub comment: Option<String>,
}

impl AuthorizedKey {
    /// Whether this key may send `command` to `target`.
    pub fn allows(&self, target: &str, command: &str) -> bool {
        self.targets.iter().any(|p| glob_matches(p, target))
            && self.commands.iter().any(|p| glob_matches(p, command))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: Spanned<String>,
    public_key: Spanned<String>,
    targets: Option<Spanned<Vec<String>>>,
    commands: Option<Spanned<Vec<String>>>,
    bundles: Option<Spanned<Vec<String>>>,
    comment: Option<String>,
}

impl AuthorizedKeys {
    /// Read and check the file at `path`; refused if group or others may write it.
    pub fn load(path: &Path) -> Result<AuthorizedKeys, ConfigError> {
        let source = berrygw_core::read_file(path, 0o022, |mode| {
            format!(
                "mode {mode:04o} lets other users edit the keys allowed to move equipment; run \
                 `chmod 644 {p}` (or 600) and `chown root:berrygw {p}`",
                p = path.display()
            )
        })?;
        AuthorizedKeys::parse(path, &source)
    }

    /// Parse and check the file's text; `path` names it in messages.
    pub fn parse(path: &Path, source: &str) -> Result<AuthorizedKeys, ConfigError> {
        let file: File =
            toml::from_str(source).map_err(|e| locate(path, source, e.span(), e.message().to_string()))?;
        let at = |span: Range<usize>, key: String, message: String| {
            let mut e = locate(path, source, Some(span), message);
            e.key = Some(key);
            e
        };
        let mut keys = Vec::with_capacity(file.key.len());
        let mut by_id = HashMap::new();
        for (i, e) in file.key.into_iter().enumerate() {
            let field = |k: &str| format!("key[{i}].{k}");
            let id = e.id.get_ref().clone();
            if id.is_empty() || id.len() > MAX_NAME_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(at(
                    e.id.span(),
                    field("id"),
                    format!("an id of 1 to {MAX_NAME_BYTES} printable ASCII characters without spaces"),
                ));
            }
            if let Some(other) = by_id.insert(id.clone(), i) {
                return Err(at(e.id.span(), field("id"), format!("key[{other}] already has this id")));
            }
            let public_key = parse_public_key(e.public_key.get_ref())
                .map_err(|message| at(e.public_key.span(), field("public_key"), message))?;
            let bundles = match &e.bundles {
                Some(list) => {
                    check_kinds(list).map_err(|message| at(list.span(), field("bundles"), message))?
                }
                None => Vec::new(),
            };
            let globs = |list: &Option<Spanned<Vec<String>>>, what: &str| match list {
                Some(list) => {
                    check_globs(list, what).map_err(|message| at(list.span(), field(what), message))
                }
                None if !bundles.is_empty() => Ok(Vec::new()),
                None => Err(at(
                    e.id.span(),
                    field(what),
                    format!("missing `{what}` (a key without `bundles` exists to sign commands)"),
                )),
            };
            let targets = globs(&e.targets, "targets")?;
            let commands = globs(&e.commands, "commands")?;
            keys.push(AuthorizedKey { id, public_key, targets, commands, bundles, comment: e.comment });
        }
        Ok(AuthorizedKeys { path: path.to_path_buf(), keys, by_id })
    }

    /// Where the keys were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key called `id`.
    pub fn get(&self, id: &str) -> Option<&AuthorizedKey> {
        self.by_id.get(id).and_then(|&i| self.keys.get(i))
    }

    /// Every key, in file order.
    pub fn keys(&self) -> &[AuthorizedKey] {
        &self.keys
    }
}

fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| format!("not standard padded base64: {e}"))?;
    let bytes: [u8; 32] =
        bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes; an Ed25519 public key has 32", b.len()))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())?;
    if key.is_weak() {
        return Err("a weak (small-order) Ed25519 public key: anyone could forge its signatures".into());
    }
    Ok(key)
}

fn check_kinds(list: &Spanned<Vec<String>>) -> Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for label in list.get_ref() {
        let kind = Kind::from_label(label).ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!("`{label}` in `bundles`: not a kind of bundle file; known: {}", known.join(", "))
        })?;
        kinds.push(kind);
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

fn check_globs(globs: &Spanned<Vec<String>>, what: &str) -> Result<Vec<String>, String> {
    let list = globs.get_ref();
    if list.is_empty() {
        return Err(format!("empty `{what}`: list at least one name or glob (\"*\" for all)"));
    }
    if let Some(bad) =
        list.iter().find(|g| g.is_empty() || g.len() > MAX_NAME_BYTES || g.chars().any(char::is_control))
    {
        return Err(format!(
            "`{bad}` in `{what}`: a glob is 1 to {MAX_NAME_BYTES} bytes without control characters"
        ));
    }
    Ok(list.clone())
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (possibly none)
/// and every other character only itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in `text` its current match ends.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more byte and retry from there.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use ed25519_dalek::SigningKey;

    fn public_b64(seed: u8) -> String {
        BASE64.encode(SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes())
    }

    fn sample() -> String {
        format!(
            r#"# authorized_keys
[[key]]
id = "central-2026"
public_key = "{a}"
targets = ["barrage-*", "armoire-ep-rue-haute"]
commands = ["move_bay*", "stop_bay*"]
comment = "plateforme centrale, clé 2026"

[[key]]
id = "astreinte"
public_key = "{b}"
targets = ["*"]
commands = ["stop_*"]
"#,
            a = public_b64(1),
            b = public_b64(2)
        )
    }

    fn parse(text: &str) -> Result<AuthorizedKeys, ConfigError> {
        AuthorizedKeys::parse(Path::new("authorized_keys"), text)
    }

    #[test]
    fn keys_and_scopes_are_read() {
        let keys = parse(&sample()).expect("valid file");
        assert_eq!(keys.keys().len(), 2);
        let central = keys.get("central-2026").expect("by id");
        assert_eq!(central.public_key, SigningKey::from_bytes(&[1; 32]).verifying_key());
        assert_eq!(central.comment.as_deref(), Some("plateforme centrale, clé 2026"));
        assert!(central.allows("barrage-cher-1", "move_bay"));
        assert!(central.allows("armoire-ep-rue-haute", "stop_bay2"));
        assert!(!central.allows("armoire-ep-rue-basse", "move_bay"), "target not listed");
        assert!(!central.allows("barrage-cher-1", "reset"), "command not listed");
        let astreinte = keys.get("astreinte").expect("second key");
        assert!(astreinte.allows("anything", "stop_all"));
        assert!(!astreinte.allows("anything", "move_bay"));
        assert!(keys.get("nobody").is_none());
    }

    #[test]
    fn star_matches_any_run_and_nothing_else_is_special() {
        let cases = [
            ("*", "", true),
            ("*", "barrage", true),
            ("barrage-*", "barrage-", true),
            ("barrage-*", "barrage-cher-1", true),
            ("barrage-*", "barrage", false),
            ("*-1", "barrage-cher-1", true),
            ("*-1", "barrage-cher-12", false),
            ("b*r*e", "barrage", true),
            ("b*r*e", "barrages", false),
            ("a*a*a", "aaaa", true),
            ("a*a*a", "aa", false),
            ("move_bay?", "move_bay1", false),
            ("[ab]", "a", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**", "x", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        let sample = sample();
        let cases = [
            (sample.replace("\"astreinte\"", "\"central-2026\""), 10, "key[1].id", "already has this id"),
            (sample.replace(&public_b64(2), "not base64!"), 11, "key[1].public_key", "base64"),
            (sample.replace(&public_b64(2), &BASE64.encode([7u8; 31])), 11, "key[1].public_key", "32"),
            (sample.replace("targets = [\"*\"]", "targets = []"), 12, "key[1].targets", "empty"),
            (sample.replace("commands = [\"stop_*\"]", "commands = []"), 13, "key[1].commands", "empty"),
            (sample.replace("\"astreinte\"", "\"astr einte\""), 10, "key[1].id", "without spaces"),
            (sample.replace("comment =", "colour = \"red\"\ncomment ="), 7, "key.colour", "unknown field"),
        ];
        for (text, line, key, words) in cases {
            let err = parse(&text).expect_err(key);
            assert_eq!(err.line, Some(line), "{key}: {err}");
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert!(err.message.contains(words), "{key}: {err}");
        }
    }

    #[test]
    fn a_weak_public_key_is_refused() {
        // The identity point: every signature "verifies" under it with non-strict checking.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let text = sample().replace(&public_b64(2), &BASE64.encode(identity));
        let err = parse(&text).expect_err("weak key");
        assert!(err.message.contains("weak"), "{err}");
    }

    #[test]
    fn a_file_others_may_write_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, sample()).expect("write");
        for mode in [0o664, 0o646, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = AuthorizedKeys::load(&path).expect_err("writable by others");
            assert!(err.message.contains("chmod 644") && err.message.contains("chown root:berrygw"), "{err}");
        }
        for mode in [0o644, 0o640, 0o600] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            AuthorizedKeys::load(&path).expect("only the owner may write");
        }
    }

    #[test]
    fn an_empty_file_authorizes_nobody() {
        let keys = parse("# no central commands on this gateway\n").expect("empty is valid");
        assert!(keys.keys().is_empty());
        assert!(keys.get("central-2026").is_none());
    }
}
