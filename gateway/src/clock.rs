//! Whether this gateway's clock can be trusted: the kernel's own NTP state,
//! read with adjtimex(2) in read-only mode, whoever disciplines the clock
//! (chrony, ntpd, systemd-timesyncd). A command's `not_after` means nothing
//! on a Pi that booted hours behind after a power cut.
//!
//! Reading needs no privilege, but a syscall filter can forbid the call
//! itself: the shipped unit allows `adjtimex`/`clock_adjtime` (without
//! CAP_SYS_TIME the kernel refuses any change), and a filter that denies them
//! shows here as `Unknown`, never as "not synchronized".

use serde::{Deserialize, Serialize};

/// What the kernel says of the clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "error")]
pub enum ClockSync {
    Synchronized,
    Unsynchronized,
    /// The question could not be asked (the call failed: a syscall filter,
    /// usually), with the error.
    Unknown(String),
}

impl ClockSync {
    pub fn is_synchronized(&self) -> bool {
        matches!(self, ClockSync::Synchronized)
    }
}

/// Ask the kernel now (one read-only adjtimex call, microseconds).
pub fn clock_sync() -> ClockSync {
    // SAFETY: an all-zero timex is valid, and with `modes` 0 ntp_adjtime only reads.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::ntp_adjtime(&mut t) };
    if state < 0 {
        let e = std::io::Error::last_os_error();
        return ClockSync::Unknown(format!(
            "adjtimex failed ({e}): a syscall filter denies it? the unit must allow adjtimex \
             and clock_adjtime (see systemd/berrygw.service)"
        ));
    }
    if state == libc::TIME_ERROR || t.status & libc::STA_UNSYNC != 0 {
        ClockSync::Unsynchronized
    } else {
        ClockSync::Synchronized
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_state_without_error_when_unfiltered() {
        // Outside a syscall filter the read-only call always succeeds.
        assert!(!matches!(clock_sync(), ClockSync::Unknown(_)), "{:?}", clock_sync());
    }

    #[test]
    fn serializes_with_the_state_and_any_error() {
        let s = serde_json::to_string(&ClockSync::Unknown("denied".into())).unwrap_or_default();
        assert_eq!(s, r#"{"state":"unknown","error":"denied"}"#);
        let s = serde_json::to_string(&ClockSync::Synchronized).unwrap_or_default();
        assert_eq!(s, r#"{"state":"synchronized"}"#);
    }
}
