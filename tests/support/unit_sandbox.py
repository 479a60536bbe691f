#!/usr/bin/python3
"""Run a command under the sandbox a systemd unit file asks for, as far as a
test can without systemd as PID 1:

    unit_sandbox.py systemd/berrygw.service -- COMMAND [ARGS...]

- SystemCallFilter= (every line, in order: the first decides allow-list or
  deny-list, later ones add or, with ~, remove), with the sets expanded by
  `systemd-analyze syscall-filter` (systemd's own tables),
  SystemCallErrorNumber= as the action for what is not allowed;
- ProtectClock=yes as systemd applies it: a second filter denying @clock;
- CapabilityBoundingSet= (capabilities dropped from the bounding set, so the
  command runs without any even as root) and NoNewPrivileges=.

The filters are built and loaded with libseccomp's own Python binding
(Debian's python3-seccomp), not with berrygw's code. Exit code 125 when the
sandbox could not be set up.
"""

import ctypes
import errno
import os
import subprocess
import sys

import seccomp

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38


def fail(message):
    print(f"unit_sandbox: {message}", file=sys.stderr)
    sys.exit(125)


def service_settings(unit_path):
    """The [Service] section's assignments, in order (a key may repeat)."""
    settings = []
    section = None
    with open(unit_path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                key, value = line.split("=", 1)
                settings.append((key.strip(), value.strip()))
    return settings


def syscall_sets():
    """systemd's named sets: '@name' -> list of members (names or @sets)."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        check=True, capture_output=True, text=True,
    ).stdout
    sets, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = sets.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return sets


def expand(names, sets, seen=None):
    seen = set() if seen is None else seen
    out = set()
    for name in names:
        if name.startswith("@"):
            if name in seen:
                continue
            seen.add(name)
            if name not in sets:
                fail(f"unknown system call set {name}")
            out |= expand(sets[name], sets, seen)
        else:
            out.add(name)
    return out


def errno_action(settings):
    names = [v for k, v in settings if k == "SystemCallErrorNumber"]
    if not names:
        return seccomp.KILL_PROCESS
    value = names[-1]
    number = getattr(errno, value, None)
    if number is None:
        fail(f"unknown SystemCallErrorNumber={value}")
    return seccomp.ERRNO(number)


def add_rules(flt, action, names):
    for name in sorted(names):
        try:
            flt.add_rule(action, name)
        except (RuntimeError, ValueError):
            # A call this architecture does not have (clock_adjtime64 on 64-bit).
            pass


def main():
    if "--" not in sys.argv or len(sys.argv) < 4:
        fail("usage: unit_sandbox.py UNIT -- COMMAND [ARGS...]")
    split = sys.argv.index("--")
    unit, command = sys.argv[1], sys.argv[split + 1:]
    settings = service_settings(unit)
    sets = syscall_sets()

    filters = [v for k, v in settings if k == "SystemCallFilter"]
    if filters:
        allow_list = not filters[0].startswith("~")
        chosen = set()
        for value in filters:
            invert = value.startswith("~")
            names = expand(value.lstrip("~").split(), sets)
            if invert == (not allow_list):
                chosen |= names
            else:
                chosen -= names
        if allow_list:
            main_filter = seccomp.SyscallFilter(defaction=errno_action(settings))
            add_rules(main_filter, seccomp.ALLOW, chosen)
        else:
            main_filter = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
            add_rules(main_filter, errno_action(settings), chosen)
    else:
        main_filter = None

    libc = ctypes.CDLL(None, use_errno=True)
    if any(k == "CapabilityBoundingSet" and v == "" for k, v in settings):
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                if ctypes.get_errno() == errno.EINVAL:
                    break  # past the last capability this kernel knows
                fail(f"could not drop capability {cap} from the bounding set")
    if any(k == "NoNewPrivileges" and v == "yes" for k, v in settings):
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)

    if any(k == "ProtectClock" and v == "yes" for k, v in settings):
        clock = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        add_rules(clock, seccomp.ERRNO(errno.EPERM), expand(["@clock"], sets))
        clock.load()
    if main_filter is not None:
        main_filter.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
