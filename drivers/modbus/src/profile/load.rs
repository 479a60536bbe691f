//! Reading profile files: TOML → `Profile`, with every rule checked once here so the rest
//! of the crate can trust a `Profile`. Errors name the file, the line and the key, and the
//! gateway refuses to start on one rather than guess.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berrygw_core::ConfigError;
use serde::Deserialize;
use toml::Spanned;

use super::value;
use super::{ArgSpec, ArgType, CommandSpec, DataType, Literal, Point, Profile};

/// Every profile known to the gateway, by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Arc<Profile>>,
}

impl ProfileSet {
    /// Load `*.toml` from each directory in turn; a later directory replaces an earlier one's
    /// profile of the same name (shipped `/usr/share/berrygw/profiles`, then the site's
    /// `/etc/berrygw/profiles`). A directory that does not exist is skipped.
    pub fn load(dirs: &[&Path]) -> Result<ProfileSet, ConfigError> {
        let mut set = ProfileSet::default();
        for dir in dirs {
            let mut files = match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect::<Vec<_>>(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(whole_file(dir, format!("cannot read the directory: {e}"))),
            };
            files.sort();
            let mut seen_here: HashMap<String, PathBuf> = HashMap::new();
            for file in files {
                let profile = Profile::load_file(&file)?;
                if let Some(first) = seen_here.insert(profile.name.clone(), file.clone()) {
                    return Err(whole_file(
                        &file,
                        format!(
                            "profile `{}` is also defined in {}: one name, one file per directory",
                            profile.name,
                            first.display()
                        ),
                    ));
                }
                set.profiles.insert(profile.name.clone(), Arc::new(profile));
            }
        }
        Ok(set)
    }

    /// The profile called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Profile>> {
        self.profiles.get(name).cloned()
    }

    /// Profile names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// Every profile, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.profiles.values()
    }
}

fn whole_file(path: &Path, message: String) -> ConfigError {
    ConfigError { file: path.to_path_buf(), line: None, key: None, message }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    points: Vec<Spanned<Point>>,
    #[serde(default)]
    commands: Vec<Spanned<CommandSpec>>,
}

impl Profile {
    /// Read and check one profile file.
    pub fn load_file(path: &Path) -> Result<Profile, ConfigError> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| whole_file(path, format!("cannot read the profile: {e}")))?;
        Profile::parse(path, &source)
    }

    /// Parse and check profile text; `path` is only used to name errors.
    pub fn parse(path: &Path, source: &str) -> Result<Profile, ConfigError> {
        let file: ProfileFile = toml::from_str(source).map_err(|e| {
            let line = e.span().map(|s| line_of(source, s.start));
            let key = line.and_then(|l| key_on_line(source, l));
            ConfigError { file: path.to_path_buf(), line, key, message: e.message().trim().to_string() }
        })?;
        let check = Checker { path, source };
        check.profile(&file)?;
        Ok(Profile {
            name: file.name.into_inner(),
            description: file.description,
            points: file.points.into_iter().map(Spanned::into_inner).collect(),
            commands: file.commands.into_iter().map(Spanned::into_inner).collect(),
            source: path.to_path_buf(),
        })
    }
}

/// Where errors point: the file text and the span of the table being checked.
struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
}

impl Checker<'_> {
    /// An error about `key` inside the table spanning `span`; `needle` (the key itself or an
    /// offending value) is searched inside the span to find the line.
    fn err(&self, span: &Range<usize>, key: String, needle: &str, message: String) -> ConfigError {
        let start = span.start.min(self.source.len());
        // For `[[points]]` entries toml spans only the header: the table runs to the next header.
        let body = self.source[start..].find('\n').map_or(self.source.len(), |i| start + i);
        let next_header = self.source[body..]
            .match_indices('\n')
            .map(|(i, _)| body + i + 1)
            .find(|&i| self.source[i..].trim_start_matches([' ', '\t']).starts_with('['))
            .unwrap_or(self.source.len());
        let end = span.end.max(next_header).clamp(start, self.source.len());
        let offset =
            self.source[start..end].find(needle).filter(|_| !needle.is_empty()).map_or(start, |i| start + i);
        ConfigError {
            file: self.path.to_path_buf(),
            line: Some(line_of(self.source, offset)),
            key: Some(key),
            message,
        }
    }

    fn profile(&self, file: &ProfileFile) -> Result<(), ConfigError> {
        if file.name.get_ref().trim().is_empty() {
            return Err(self.err(&file.name.span(), "name".into(), "name", "must not be empty".into()));
        }
        let mut by_name: HashMap<&str, &Point> = HashMap::new();
        for (i, sp) in file.points.iter().enumerate() {
            let p = sp.get_ref();
            let key = |k: &str| format!("points[{i}] ({}).{k}", p.name);
            self.point(sp, &key)?;
            if by_name.insert(p.name.as_str(), p).is_some() {
                let msg = format!("point `{}` is defined twice", p.name);
                return Err(self.err(&sp.span(), key("name"), &format!("\"{}\"", p.name), msg));
            }
        }
        self.overlaps(&file.points)?;
        let mut names = HashSet::new();
        for (i, sc) in file.commands.iter().enumerate() {
            let c = sc.get_ref();
            let key = |k: &str| format!("commands[{i}] ({}).{k}", c.name);
            if !names.insert(c.name.as_str()) {
                let msg = format!("command `{}` is defined twice", c.name);
                return Err(self.err(&sc.span(), key("name"), &format!("\"{}\"", c.name), msg));
            }
            self.command(sc, &by_name, &key)?;
        }
        for (i, sc) in file.commands.iter().enumerate() {
            let c = sc.get_ref();
            for (j, other) in c.cancels.iter().enumerate() {
                if other == &c.name || !file.commands.iter().any(|o| &o.get_ref().name == other) {
                    let msg = format!("`{other}` is not another command of this profile");
                    let key = format!("commands[{i}] ({}).cancels[{j}]", c.name);
                    return Err(self.err(&sc.span(), key, &format!("\"{other}\""), msg));
                }
            }
        }
        Ok(())
    }

    fn point(&self, sp: &Spanned<Point>, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let (p, span) = (sp.get_ref(), sp.span());
        if p.name.trim().is_empty() {
            return Err(self.err(&span, key("name"), "name", "must not be empty".into()));
        }
        if p.kind.is_bit() != (p.data_type == DataType::Bool) {
            let msg = if p.kind.is_bit() {
                "coils and discrete inputs are bits: use type = \"bool\"".to_string()
            } else {
                "registers hold numbers: use u16, i16, u32, i32 or f32".to_string()
            };
            return Err(self.err(&span, key("type"), "type", msg));
        }
        if p.last_address() > u32::from(u16::MAX) {
            let msg = format!("a {} value at address {} runs past 65535", type_name(p.data_type), p.address);
            return Err(self.err(&span, key("address"), "address", msg));
        }
        if !p.scale.is_finite() || p.scale == 0.0 {
            return Err(self.err(&span, key("scale"), "scale", "must be a finite, non-zero number".into()));
        }
        if !p.offset.is_finite() {
            return Err(self.err(&span, key("offset"), "offset", "must be a finite number".into()));
        }
        if !p.labels.is_empty() {
            let Some((lo, hi)) = p.data_type.int_range() else {
                return Err(self.err(
                    &span,
                    key("enum"),
                    "enum",
                    "an f32 point cannot be an enumeration".into(),
                ));
            };
            if let Some(raw) = p.labels.keys().find(|r| **r < lo || **r > hi) {
                let msg = format!("raw value {raw} does not fit a {}", type_name(p.data_type));
                return Err(self.err(&span, key("enum"), "enum", msg));
            }
            let mut seen = HashSet::new();
            if let Some(dup) = p.labels.values().find(|l| !seen.insert(l.as_str())) {
                let msg = format!("label `{dup}` is used for two raw values");
                return Err(self.err(&span, key("enum"), &format!("\"{dup}\""), msg));
            }
        }
        Ok(())
    }

    /// Two points sharing an address must read it the same way (same type and word order).
    fn overlaps(&self, points: &[Spanned<Point>]) -> Result<(), ConfigError> {
        for (i, a) in points.iter().enumerate() {
            for b in &points[..i] {
                let (pa, pb) = (a.get_ref(), b.get_ref());
                let overlap = pa.kind == pb.kind
                    && u32::from(pa.address) <= pb.last_address()
                    && u32::from(pb.address) <= pa.last_address();
                let same = pa.address == pb.address
                    && pa.data_type == pb.data_type
                    && pa.word_order == pb.word_order;
                if overlap && !same {
                    let msg = format!(
                        "overlaps point `{}` ({} at {}) with a different layout",
                        pb.name,
                        type_name(pb.data_type),
                        pb.address
                    );
                    let key = format!("points[{i}] ({}).address", pa.name);
                    return Err(self.err(&a.span(), key, "address", msg));
                }
            }
        }
        Ok(())
    }

    fn command(
        &self,
        sc: &Spanned<CommandSpec>,
        points: &HashMap<&str, &Point>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        let (c, span) = (sc.get_ref(), sc.span());
        let err = |k: String, needle: &str, msg: String| self.err(&span, k, needle, msg);
        let point = |k: String, name: &str| {
            points.get(name).copied().ok_or_else(|| {
                err(k, &format!("\"{name}\""), format!("no point called `{name}` in this profile"))
            })
        };
        if c.name.trim().is_empty() {
            return Err(err(key("name"), "name", "must not be empty".into()));
        }
        if !(c.min_interval_s.is_finite() && c.min_interval_s >= 0.0) {
            return Err(err(key("min_interval_s"), "min_interval_s", "must be 0 or more seconds".into()));
        }
        let mut args: HashMap<&str, &ArgSpec> = HashMap::new();
        for (j, a) in c.args.iter().enumerate() {
            let k = |f: &str| key(&format!("args[{j}] ({}).{f}", a.name));
            self.arg(a, &k, &span)?;
            if args.insert(a.name.as_str(), a).is_some() {
                return Err(err(k("name"), &a.name, format!("argument `{}` is declared twice", a.name)));
            }
        }
        let arg = |k: String, name: &str| {
            args.get(name).copied().ok_or_else(|| {
                err(k, &format!("\"{name}\""), format!("no argument called `{name}` in this command"))
            })
        };
        if c.writes.is_empty() {
            return Err(err(key("writes"), "writes", "a command must write at least one point".into()));
        }
        for (j, w) in c.writes.iter().enumerate() {
            let k = |f: &str| key(&format!("writes[{j}].{f}"));
            let p = point(k("point"), &w.point)?;
            if !p.kind.is_writable() {
                let msg = format!(
                    "point `{}` is a read-only {:?}: write a coil or a holding register",
                    p.name, p.kind
                );
                return Err(err(k("point"), &format!("\"{}\"", p.name), msg));
            }
            match (&w.arg, &w.value) {
                (Some(name), None) => {
                    let a = arg(k("arg"), name)?;
                    self.arg_fits_point(a, p).map_err(|m| err(k("arg"), &format!("\"{name}\""), m))?;
                }
                (None, Some(v)) => {
                    literal_fits(v, p).map_err(|m| err(k("value"), "value", m))?;
                    if let Literal::Number(n) = v {
                        value::encode_number(p, *n).map_err(|e| err(k("value"), "value", e.to_string()))?;
                    }
                }
                _ => return Err(err(k("point"), &w.point, "give exactly one of `arg` or `value`".into())),
            }
        }
        for (j, pre) in c.preconditions.iter().enumerate() {
            let k = |f: &str| key(&format!("preconditions[{j}].{f}"));
            let p = point(k("point"), &pre.point)?;
            if pre.reason.trim().is_empty() {
                return Err(err(k("reason"), &pre.point, "say why, for the person refused".into()));
            }
            let forms =
                [pre.equals.is_some(), pre.not_equals.is_some(), pre.min.is_some() || pre.max.is_some()];
            if forms.iter().filter(|f| **f).count() != 1 {
                let msg = "give exactly one of `equals`, `not_equals`, or `min`/`max`".to_string();
                return Err(err(k("point"), &pre.point, msg));
            }
            for lit in [&pre.equals, &pre.not_equals].into_iter().flatten() {
                literal_fits(lit, p).map_err(|m| err(k("equals"), &pre.point, m))?;
            }
            if (pre.min.is_some() || pre.max.is_some())
                && (p.data_type == DataType::Bool || !p.labels.is_empty())
            {
                let msg = format!("`{}` is not a number: compare it with `equals`", p.name);
                return Err(err(k("min"), &pre.point, msg));
            }
        }
        // Interlocks are re-checked while waiting for the read-back: a command that changed
        // its own interlock point would trip itself.
        for (j, pre) in c.preconditions.iter().enumerate() {
            if pre.point == c.verify.point || c.writes.iter().any(|w| w.point == pre.point) {
                let msg = format!(
                    "`{}` is written or verified by this command: it cannot also be its interlock",
                    pre.point
                );
                return Err(err(key(&format!("preconditions[{j}].point")), &pre.point, msg));
            }
        }
        let v = &c.verify;
        let p = point(key("verify.point"), &v.point)?;
        match (&v.arg, &v.value) {
            (Some(name), None) => {
                let a = arg(key("verify.arg"), name)?;
                self.arg_fits_point(a, p).map_err(|m| err(key("verify.arg"), "verify", m))?;
            }
            (None, Some(lit)) => literal_fits(lit, p).map_err(|m| err(key("verify.value"), "verify", m))?,
            _ => return Err(err(key("verify"), "verify", "give exactly one of `arg` or `value`".into())),
        }
        if !(v.tolerance.is_finite() && v.tolerance >= 0.0) {
            return Err(err(key("verify.tolerance"), "tolerance", "must be 0 or more".into()));
        }
        if !(v.deadline_s.is_finite() && v.deadline_s > 0.0) {
            return Err(err(key("verify.deadline_s"), "deadline_s", "must be more than 0 seconds".into()));
        }
        Ok(())
    }

    fn arg(&self, a: &ArgSpec, key: &dyn Fn(&str) -> String, span: &Range<usize>) -> Result<(), ConfigError> {
        let needle = format!("\"{}\"", a.name);
        let err = |f: &str, msg: &str| self.err(span, key(f), &needle, msg.to_string());
        match a.arg_type {
            ArgType::Int | ArgType::Float => {
                let (Some(min), Some(max)) = (a.min, a.max) else {
                    return Err(err("min", "numeric arguments need both `min` and `max`"));
                };
                if !(min.is_finite() && max.is_finite()) || min >= max {
                    return Err(err("max", "`min` must be below `max`"));
                }
                if a.arg_type == ArgType::Int && (min.fract() != 0.0 || max.fract() != 0.0) {
                    return Err(err("min", "an int argument needs whole `min` and `max`"));
                }
                if a.values.is_some() {
                    return Err(err("values", "`values` is for enum arguments"));
                }
            }
            ArgType::Bool => {
                if a.min.is_some() || a.max.is_some() || a.values.is_some() {
                    return Err(err("type", "a bool argument takes no `min`, `max` or `values`"));
                }
            }
            ArgType::Enum => {
                let Some(values) = a.values.as_ref().filter(|v| !v.is_empty()) else {
                    return Err(err("values", "an enum argument needs a non-empty `values` list"));
                };
                if values.iter().collect::<HashSet<_>>().len() != values.len() {
                    return Err(err("values", "`values` lists a label twice"));
                }
                if a.min.is_some() || a.max.is_some() {
                    return Err(err("min", "an enum argument takes no `min` or `max`"));
                }
            }
        }
        Ok(())
    }

    /// Whether every value the argument accepts can be written to (or compared with) `p`.
    fn arg_fits_point(&self, a: &ArgSpec, p: &Point) -> Result<(), String> {
        match a.arg_type {
            ArgType::Bool if p.data_type == DataType::Bool && p.labels.is_empty() => Ok(()),
            ArgType::Enum if !p.labels.is_empty() => {
                match a.values.iter().flatten().find(|v| p.raw_of(v).is_none()) {
                    Some(v) => Err(format!("label `{v}` is not in the enum of point `{}`", p.name)),
                    None => Ok(()),
                }
            }
            ArgType::Int | ArgType::Float if p.data_type != DataType::Bool && p.labels.is_empty() => {
                for bound in [a.min, a.max].into_iter().flatten() {
                    value::encode_number(p, bound)
                        .map_err(|e| format!("bound {bound} of `{}` cannot be written: {e}", a.name))?;
                }
                Ok(())
            }
            _ => Err(format!(
                "a {:?} argument does not match point `{}` ({}{})",
                a.arg_type,
                p.name,
                type_name(p.data_type),
                if p.labels.is_empty() { "" } else { " enum" }
            )),
        }
    }
}

/// Whether a constant can be compared with (or written to) `p`.
fn literal_fits(lit: &Literal, p: &Point) -> Result<(), String> {
    match lit {
        Literal::Label(l) if p.raw_of(l).is_some() => Ok(()),
        Literal::Label(l) if !p.labels.is_empty() => Err(format!(
            "`{l}` is not a label of `{}` (labels: {})",
            p.name,
            p.labels.values().cloned().collect::<Vec<_>>().join(", ")
        )),
        Literal::Bool(_) if p.data_type == DataType::Bool && p.labels.is_empty() => Ok(()),
        Literal::Number(_) if p.data_type != DataType::Bool && p.labels.is_empty() => Ok(()),
        _ => Err(format!("{lit} cannot be compared with point `{}` ({})", p.name, type_name(p.data_type))),
    }
}

fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::Bool => "bool",
        DataType::U16 => "u16",
        DataType::I16 => "i16",
        DataType::U32 => "u32",
        DataType::I32 => "i32",
        DataType::F32 => "f32",
    }
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// The key written on `line` (1-based), for TOML syntax errors.
fn key_on_line(source: &str, line: usize) -> Option<String> {
    let text = source.lines().nth(line.checked_sub(1)?)?.trim();
    let (key, _) = text.split_once('=')?;
    Some(key.trim().to_string()).filter(|k| !k.is_empty() && !k.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, ConfigError> {
        Profile::parse(Path::new("site.toml"), text)
    }

    const BASE: &str = r#"
name = "pump"

[[points]]
name = "selector"
kind = "input_register"
address = 0
type = "u16"
enum = { 0 = "local", 1 = "remote" }

[[points]]
name = "speed"
kind = "holding_register"
address = 10
type = "u16"
scale = 0.1
"#;

    fn with_command(cmd: &str) -> String {
        format!("{BASE}\n{cmd}")
    }

    #[test]
    fn a_valid_profile_loads_with_its_enum_labels() {
        let p = parse(BASE).expect("valid");
        assert_eq!(p.point("selector").and_then(|s| s.label_of(1)), Some("remote"));
        assert_eq!(p.point("speed").map(|s| s.scale), Some(0.1));
    }

    #[test]
    fn unknown_key_is_reported_with_file_line_and_key() {
        let text = BASE.replace("scale = 0.1", "scael = 0.1");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.file, PathBuf::from("site.toml"));
        assert_eq!(e.line, Some(16), "{e}");
        assert!(e.to_string().contains("scael"), "{e}");
    }

    #[test]
    fn unknown_point_in_a_precondition_names_the_command_and_line() {
        let text = with_command(
            r#"
[[commands]]
name = "set_speed"
args = [{ name = "speed", type = "float", min = 0, max = 100 }]
writes = [{ point = "speed", arg = "speed" }]
preconditions = [{ point = "selectr", equals = "remote", reason = "local mode" }]
verify = { point = "speed", arg = "speed", tolerance = 0.1, deadline_s = 5 }
"#,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("commands[0] (set_speed).preconditions[0].point"));
        assert_eq!(e.line, Some(23), "{e}");
        assert!(e.message.contains("selectr"));
    }

    #[test]
    fn arg_bounds_must_be_ordered() {
        let text = with_command(
            r#"
[[commands]]
name = "set_speed"
args = [{ name = "speed", type = "float", min = 100, max = 0 }]
writes = [{ point = "speed", arg = "speed" }]
verify = { point = "speed", arg = "speed", deadline_s = 5 }
"#,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("commands[0] (set_speed).args[0] (speed).max"));
        assert_eq!(e.line, Some(21), "{e}");
    }

    #[test]
    fn arg_bounds_must_fit_the_register() {
        let text = with_command(
            r#"
[[commands]]
name = "set_speed"
args = [{ name = "speed", type = "float", min = 0, max = 10000 }]
writes = [{ point = "speed", arg = "speed" }]
verify = { point = "speed", arg = "speed", deadline_s = 5 }
"#,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("commands[0] (set_speed).writes[0].arg"));
        assert!(e.message.contains("10000"), "{e}");
    }

    #[test]
    fn writing_a_read_only_point_is_refused_at_load() {
        let text = with_command(
            r#"
[[commands]]
name = "force"
writes = [{ point = "selector", value = "remote" }]
verify = { point = "selector", value = "remote", deadline_s = 5 }
"#,
        );
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("read-only"), "{e}");
        assert_eq!(e.line, Some(21), "{e}");
    }

    #[test]
    fn overlapping_points_of_different_types_are_refused() {
        let text = format!(
            "{BASE}\n[[points]]\nname = \"speed32\"\nkind = \"holding_register\"\naddress = 9\ntype = \"u32\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("points[2] (speed32).address"));
        assert!(e.message.contains("speed"), "{e}");
        assert_eq!(e.line, Some(21), "{e}");
    }

    #[test]
    fn bits_must_be_bool_and_registers_numbers() {
        let text = BASE.replace("kind = \"input_register\"", "kind = \"discrete_input\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("points[0] (selector).type"));
        assert_eq!(e.line, Some(8), "{e}");
    }

    #[test]
    fn enum_label_compared_must_exist() {
        let text = with_command(
            r#"
[[commands]]
name = "set_speed"
args = [{ name = "speed", type = "float", min = 0, max = 100 }]
writes = [{ point = "speed", arg = "speed" }]
preconditions = [{ point = "selector", equals = "remot", reason = "local mode" }]
verify = { point = "speed", arg = "speed", deadline_s = 5 }
"#,
        );
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("remot") && e.message.contains("labels: local, remote"), "{e}");
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let e = parse("name = \"x\"\n[[points]]\nname = \n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn later_directories_override_earlier_ones_by_name() {
        let base = std::env::temp_dir().join(format!("berrygw-profiles-{}", std::process::id()));
        let (shipped, site) = (base.join("shipped"), base.join("site"));
        std::fs::create_dir_all(&shipped).unwrap();
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(shipped.join("pump.toml"), BASE).unwrap();
        std::fs::write(site.join("pump.toml"), BASE.replace("scale = 0.1", "scale = 0.01")).unwrap();
        let set = ProfileSet::load(&[&shipped, &site, &base.join("missing")]).unwrap();
        let pump = set.get("pump").unwrap();
        assert_eq!(pump.point("speed").map(|p| p.scale), Some(0.01));
        assert_eq!(pump.source, site.join("pump.toml"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
