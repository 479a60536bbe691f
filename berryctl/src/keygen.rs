//! `berryctl keygen`: an Ed25519 signing key for commands or configuration bundles,
//! written 0600 (never over an existing file), and the `[[key]]` entry a gateway's
//! `authorized_keys` needs to accept it, with its scope: the targets and commands it may
//! use, the kinds of bundle file it may sign.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

use crate::Exit;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (base64 of its 32 bytes, mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// The key's id in authorized_keys and in every envelope it signs.
    #[arg(long)]
    id: String,
    /// Field devices it may command (globs, `*` any run of characters); repeat or
    /// comma-separate. Default `*`, or none for a key given `--bundles` only.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Commands it may send (globs); repeat or comma-separate. Default as `--targets`.
    #[arg(long, value_delimiter = ',')]
    commands: Vec<String>,
    /// Kinds of file it may sign in configuration bundles: devices, codecs, rules,
    /// authorized_keys, settings; repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    bundles: Vec<String>,
    /// Print JSON (`{"key_id", "public_key", "file", "authorized_keys"}`).
    #[arg(long)]
    json: bool,
}

pub fn run(args: KeygenArgs) -> Exit {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    if let Err(e) = write_private(&args.out, &BASE64.encode(key.to_bytes())) {
        eprintln!("error: {}: {e}", args.out.display());
        return Exit::Usage;
    }
    let public_key = BASE64.encode(key.verifying_key().as_bytes());
    let list =
        |l: &[String]| format!("[{}]", l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "));
    let mut entry = format!("[[key]]\nid = {:?}\npublic_key = \"{public_key}\"\n", args.id);
    let commands_too = args.bundles.is_empty() || !args.targets.is_empty() || !args.commands.is_empty();
    if commands_too {
        let all = || vec!["*".to_string()];
        let targets = if args.targets.is_empty() { all() } else { args.targets.clone() };
        let commands = if args.commands.is_empty() { all() } else { args.commands.clone() };
        entry.push_str(&format!("targets = {}\ncommands = {}\n", list(&targets), list(&commands)));
    }
    if !args.bundles.is_empty() {
        entry.push_str(&format!("bundles = {}\n", list(&args.bundles)));
    }
    // The entry must be one the gateways accept: checked with their own parser.
    if let Err(e) = berrygw_proto::keys::AuthorizedKeys::parse(Path::new("authorized_keys"), &entry) {
        let _ = std::fs::remove_file(&args.out);
        eprintln!("error: {e}");
        return Exit::Usage;
    }
    if args.json {
        let v = serde_json::json!({
            "key_id": args.id,
            "public_key": public_key,
            "file": args.out,
            "authorized_keys": entry,
        });
        println!("{v}");
    } else {
        eprintln!(
            "private key written to {} (keep it there: whoever holds it may move equipment)",
            args.out.display()
        );
        eprintln!("add this to the gateways' authorized_keys:");
        print!("{entry}");
    }
    Exit::Done
}

/// Write `text` to a new file readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()
}

/// The signing key in `path`; refused if others may read it.
pub fn read_private(path: &Path) -> Result<SigningKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: mode {mode:04o} lets other users read a key that may move equipment; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes =
        BASE64.decode(text.trim()).map_err(|e| format!("{}: not a berryctl key: {e}", path.display()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{}: not a berryctl key (32 bytes expected)", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}
