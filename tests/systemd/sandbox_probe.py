"""Run inside a transient unit with appliance.service's sandbox (systemd-run -p ...): prints, as JSON, what each
directive makes visible to a process of the unit. Standard library only: it runs on the box's /usr/bin/python3.

argv[1]: a directory the service user owns outside every ReadWritePaths (writable unless ProtectSystem=strict).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import subprocess
import sys


def attempt(action: object) -> str:
    """ "ok", or the errno's name of the failure."""
    try:
        result = action()  # type: ignore[operator]
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    except subprocess.CalledProcessError as exc:
        return f"exit {exc.returncode}"
    return "ok" if result in (None, 0, True) else str(result)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def mount_options(point: str, *, superblock: bool = False) -> str:
    """The topmost mount's own options ("ro": read-only for this process), or its filesystem's (hidepid=)."""
    with open("/proc/self/mountinfo") as f:
        found = [line.split() for line in f if line.split()[4] == point]
    return (found[-1][-1] if superblock else found[-1][5]) if found else ""


def ptrace_traceme() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(0, 0, None, None) != 0:  # PTRACE_TRACEME
        raise OSError(ctypes.get_errno(), "ptrace")
    return 0


TMP_FILE = "/tmp/probe-file"  # the service's own (PrivateTmp), or the box's


def setuid_bit() -> None:
    with open(TMP_FILE, "w"):
        pass
    os.chmod(TMP_FILE, 0o4755)


def main() -> None:
    outside = sys.argv[1]
    s = status()
    facts = {
        "NoNewPrivs": s["NoNewPrivs"],
        "CapBnd": s["CapBnd"],
        "CapAmb": s["CapAmb"],
        "Seccomp": s["Seccomp"],
        "write_outside_rw_paths": attempt(lambda: open(os.path.join(outside, "probe"), "w").close()),
        "home": attempt(lambda: os.listdir("/home") and "listed"),
        "host_tmp_file": os.path.exists("/tmp/host-file"),
        "dev": sorted(os.listdir("/dev")),
        "ipc_ns": os.readlink("/proc/self/ns/ipc"),
        "uts_ns": os.readlink("/proc/self/ns/uts"),
        "proc_sys": mount_options("/proc/sys"),
        "proc": mount_options("/proc", superblock=True),
        "modules": attempt(lambda: os.listdir("/usr/lib/modules") and "listed"),
        "kmsg": attempt(lambda: open("/dev/kmsg").close()),
        "personality": attempt(lambda: run("setarch", "linux32", "true")),
        "setuid_bit": attempt(setuid_bit),
        "user_namespace": attempt(lambda: run("unshare", "--user", "true")),
        "chown_to_self": attempt(lambda: os.chown(TMP_FILE, -1, -1)),  # what supervisord does to its socket
        # EPERM for want of CAP_NET_RAW; EAFNOSUPPORT when the family itself is refused.
        "af_packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()),
        "ptrace": attempt(ptrace_traceme),
        "umask": oct(os.umask(0o022)),
    }
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
