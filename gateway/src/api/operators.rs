//! Who may act through the local API socket. Reaching the socket (its group) is enough to
//! read: status, points, the audit log. Acting (`POST /api/actuate`, `POST /api/reload`)
//! also needs the caller, as the kernel names it on the socket (`SO_PEERCRED`), to be
//! root, the daemon's own user, or in `[api] operators`:
//!
//! ```toml
//! [api]
//! operators = [
//!   { uid = 1001, targets = ["barrage-*"], commands = ["*"] },
//!   { group = "berrygw-ops", targets = ["*"], commands = ["stop_*", "reload"] },
//! ]
//! ```
//!
//! `targets` and `commands` are names with `*` wildcards; `reload` is the command that
//! reloads the registry, keys and rules (its target does not matter). A group matches the
//! caller's primary group or its supplementary groups in the group database.

use serde::Deserialize;

/// One entry of `[api] operators`: who (a uid or a group) may run what on which targets.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// A user id.
    pub uid: Option<u32>,
    /// A group name (primary or supplementary group of the caller).
    pub group: Option<String>,
    /// Field device names, `*` wildcards allowed.
    pub targets: Vec<String>,
    /// Profile command names, and `reload`; `*` wildcards allowed.
    pub commands: Vec<String>,
}

/// The reload action's name in `commands`.
pub const RELOAD: &str = "reload";
/// The command name of `berrygw maintenance start|stop` (target `gateway`).
pub const MAINTENANCE: &str = "maintenance";

/// The caller on the socket, as the kernel told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
}

impl Operator {
    /// The config check: exactly one of `uid` and `group`, a group that exists, names
    /// that are not empty.
    pub fn check(&self) -> Result<(), String> {
        match (&self.uid, &self.group) {
            (Some(_), Some(_)) | (None, None) => {
                return Err("api.operators: each entry names either `uid` or `group`, not both".into())
            }
            (None, Some(group)) if group_id(group).is_none() => {
                return Err(format!("api.operators: no group named {group:?} on this machine"))
            }
            _ => {}
        }
        if self.targets.iter().chain(&self.commands).any(|p| p.is_empty()) {
            return Err("api.operators: targets and commands are names or patterns, never empty".into());
        }
        Ok(())
    }

    fn covers(&self, peer: Peer) -> bool {
        match (&self.uid, &self.group) {
            (Some(uid), _) => *uid == peer.uid,
            (None, Some(group)) => group_id(group).is_some_and(|gid| in_group(peer, gid)),
            (None, None) => false,
        }
    }
}

/// Whether `peer` may run `command` on `target`; Err says why not (for the audit log).
pub fn authorize(
    operators: &[Operator],
    peer: Option<Peer>,
    target: &str,
    command: &str,
) -> Result<(), String> {
    let Some(peer) = peer else {
        return Err("the caller's identity is unknown (no peer credentials on the socket)".into());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    if peer.uid == 0 || peer.uid == own {
        return Ok(());
    }
    let allowed = operators.iter().filter(|o| o.covers(peer)).any(|o| {
        let target_ok = command == RELOAD || o.targets.iter().any(|p| matches(p, target));
        target_ok && o.commands.iter().any(|p| matches(p, command))
    });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "uid {} may read but is not an operator allowed to run {command} on {target} ([api] operators)",
            peer.uid
        ))
    }
}

/// `*`-wildcard match of a whole name.
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: exact
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The gid of group `name`, from the group database.
fn group_id(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the result we read.
    let rc =
        unsafe { libc::getgrnam_r(c_name.as_ptr(), &mut group, buf.as_mut_ptr(), buf.len(), &mut found) };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}

/// Whether `peer` has `gid` as its primary group or a supplementary one (group database).
fn in_group(peer: Peer, gid: u32) -> bool {
    if peer.gid == gid {
        return true;
    }
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the name we read.
    let rc = unsafe { libc::getpwuid_r(peer.uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return false;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: pw_name points into buf (alive); groups has room for n entries.
    let rc = unsafe { libc::getgrouplist(pw.pw_name, peer.gid, groups.as_mut_ptr(), &mut n) };
    rc >= 0 && groups.iter().take(n.max(0) as usize).any(|g| *g == gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(uid: u32, targets: &[&str], commands: &[&str]) -> Operator {
        Operator {
            uid: Some(uid),
            group: None,
            targets: targets.iter().map(|s| s.to_string()).collect(),
            commands: commands.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wildcards_match_whole_names() {
        for (p, n, m) in [
            ("*", "anything", true),
            ("barrage-*", "barrage-cher-1", true),
            ("barrage-*", "armoire", false),
            ("*-1", "barrage-cher-1", true),
            ("b*e*1", "barrage-cher-1", true),
            ("move_bay1", "move_bay1", true),
            ("move_bay1", "move_bay10", false),
            ("a*a", "a", false),
            ("", "", true),
        ] {
            assert_eq!(matches(p, n), m, "{p} {n}");
        }
    }

    #[test]
    fn only_listed_operators_may_act_and_only_on_their_targets_and_commands() {
        let ops = [op(1001, &["barrage-*"], &["stop_*", "move_bay1"]), op(1002, &["*"], &[RELOAD])];
        let peer = |uid| Some(Peer { uid, gid: 4242 });
        assert!(authorize(&ops, peer(1001), "barrage-cher-1", "move_bay1").is_ok());
        assert!(authorize(&ops, peer(1001), "barrage-cher-1", "stop_all").is_ok());
        assert!(authorize(&ops, peer(1001), "armoire-ep", "stop_all").is_err(), "other target");
        assert!(authorize(&ops, peer(1001), "barrage-cher-1", "move_bay2").is_err(), "other command");
        assert!(authorize(&ops, peer(1001), "", RELOAD).is_err());
        assert!(authorize(&ops, peer(1002), "", RELOAD).is_ok());
        assert!(authorize(&ops, peer(1002), "barrage-cher-1", "move_bay1").is_err());
        let err = authorize(&ops, peer(1003), "barrage-cher-1", "move_bay1").expect_err("not listed");
        assert!(err.contains("uid 1003"), "{err}");
        assert!(authorize(&ops, None, "barrage-cher-1", "move_bay1").is_err(), "unknown caller");
        assert!(authorize(&[], peer(0), "barrage-cher-1", "move_bay1").is_ok(), "root may act");
    }

    #[test]
    fn groups_match_the_primary_group_and_entries_are_checked() {
        let root_group = Operator { uid: None, group: Some("root".into()), ..op(0, &["*"], &["*"]) };
        root_group.check().expect("root exists");
        assert!(authorize(&[root_group], Some(Peer { uid: 4321, gid: 0 }), "x", "y").is_ok());
        let nobody =
            Operator { uid: None, group: Some("no-such-group-here".into()), ..op(0, &["*"], &["*"]) };
        assert!(nobody.check().expect_err("unknown group").contains("no group named"));
        let both = Operator { group: Some("root".into()), ..op(5, &["*"], &["*"]) };
        assert!(both.check().is_err());
    }
}
