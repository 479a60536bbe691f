//! A configuration or data file that cannot be used, located as a person reads it, and the
//! readers that refuse a file whose mode lets others see a secret.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A file error located in its file: `file:line: key `k`: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key (`sinks.app.server`, `commands[2].args[0].max`), when known.
    pub key: Option<String>,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about `file` as a whole (no line, no key).
    pub fn whole(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError { file: file.to_path_buf(), line: None, key: None, message: message.into() }
    }
}

/// A file's path and text, to locate errors in it by byte span.
#[derive(Clone, Copy, Debug)]
pub struct SourceFile<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl SourceFile<'_> {
    /// An error pointing at `span` of this file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        locate(self.path, self.text, Some(span), message.into())
    }
}

/// Turn a byte span of `source` (the text of `path`) into a line number and the dotted key
/// written on that line, prefixed by its table header.
pub fn locate(path: &Path, source: &str, span: Option<Range<usize>>, message: String) -> ConfigError {
    let (line, key) = match span {
        Some(span) => {
            let start = span.start.min(source.len());
            let line = source[..start].matches('\n').count() + 1;
            (Some(line), key_at(source, line))
        }
        None => (None, None),
    };
    ConfigError { file: path.to_path_buf(), line, key, message }
}

/// The dotted key written on `line` (1-based), prefixed by its table header.
fn key_at(source: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = source.lines().collect();
    let text = lines.get(line.checked_sub(1)?)?.trim();
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if text.starts_with('[') {
        return Some(text.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    }
    let key = text.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (t, None) => t,
    }
}

/// The text of a file. With `forbidden` mode bits (e.g. `0o077` for a file of secrets), a
/// file that has any of them is refused with `explain(mode)`, which says why and how to fix it.
pub fn read_file(
    path: &Path,
    forbidden: u32,
    explain: impl FnOnce(u32) -> String,
) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::whole(path, format!("cannot read: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & forbidden != 0 {
        return Err(ConfigError::whole(path, explain(mode)));
    }
    std::fs::read_to_string(path).map_err(|e| ConfigError::whole(path, format!("cannot read: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_located_by_line_and_dotted_key() {
        let source = "[gateway]\nid = \"x\"\n\n[sinks.app]\nserver = \"bad\"\n";
        let at = source.find("\"bad\"").map(|i| i..i + 5);
        let e = locate(Path::new("/etc/berrygw.toml"), source, at, "no scheme".into());
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("sinks.app.server")));
        assert_eq!(e.to_string(), "/etc/berrygw.toml:5: key `sinks.app.server`: no scheme");
        let header = source.find("[sinks").map(|i| i..i + 1);
        let e = locate(Path::new("f"), source, header, "m".into());
        assert_eq!(e.key.as_deref(), Some("sinks.app"));
        assert_eq!(ConfigError::whole(Path::new("f"), "gone").to_string(), "f: gone");
    }

    #[test]
    fn a_file_with_forbidden_mode_bits_is_refused_with_the_explanation(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret.toml");
        std::fs::write(&path, "k = 1\n")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let e =
            read_file(&path, 0o077, |mode| format!("mode {mode:o} lets others read it")).expect_err("0644");
        assert_eq!(e.message, "mode 644 lets others read it");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        assert_eq!(read_file(&path, 0o077, |_| String::new())?, "k = 1\n");
        let e = read_file(&dir.path().join("absent"), 0, |_| String::new()).expect_err("absent");
        assert!(e.message.starts_with("cannot read: "), "{e}");
        Ok(())
    }
}
