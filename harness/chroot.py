"""A fresh Debian 12 root made by debootstrap, with /proc, /sys, /dev and /run mounted, to run the installer in.

debootstrap's result is cached as a tarball per ISO week (``CACHE_DIR``), and every ``FreshRoot`` extracts its own
copy, so each test still starts from a pristine root. Downloads (debootstrap, apt, pip) must run in the host's
network namespace while the test session lives in a private one: ``HostNetwork`` wraps a command in ``nsenter``
with the namespace the session came from. apt's and pip's download caches are kept in ``CACHE_DIR`` too and
bind-mounted into the root: they save bandwidth, and the root stays fresh.

Mounts are made in the host's mount namespace and removed by ``close()``, lazily when busy; ``clean_stale()``
removes what a killed run left behind. Nothing under a root is deleted while anything is still mounted there.
"""

from __future__ import annotations

import datetime
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from harness.checkout import copy_work_tree
from harness.servers import wait_until

CACHE_DIR = Path("/var/cache/appliance-tests")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Roots live on disk (not a tmpfs /tmp): the installed appliance takes about a gigabyte.
ROOTS_DIR = Path("/var/tmp")
ROOT_PREFIX = "appliance-fresh-"
# What a root user's login shell would have on a fresh box; nothing of the test's own environment leaks in.
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


class HostNetwork:
    """Runs commands in the host's network namespace, given a descriptor of it (None: we are in it already)."""

    def __init__(self, netns_fd: int | None) -> None:
        self.fd = netns_fd

    def wrap(self, argv: Sequence[str]) -> list[str]:
        if self.fd is None:
            return list(argv)
        # nsenter opens the path in its own process, where /proc/self/fd/N is the descriptor we pass down.
        return ["nsenter", f"--net=/proc/self/fd/{self.fd}", "--", *argv]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.fd is None else (self.fd,)


def pristine_tarball(host: HostNetwork, *, timeout: float = 1200) -> Path:
    """This week's debootstrap of Debian 12 as a tarball: made once (about a minute), then reused."""
    year, week, _ = datetime.date.today().isocalendar()
    tarball = CACHE_DIR / f"{SUITE}-{year}w{week:02d}.tar"
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE_DIR))
    try:
        root = work / "root"
        subprocess.run(
            host.wrap(["debootstrap", SUITE, str(root), MIRROR]),
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            pass_fds=host.pass_fds,
        )
        partial = work / "root.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.replace(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in CACHE_DIR.glob(f"{SUITE}-*.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)
    return tarball


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (the order to unmount them in)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like escaped as octal.
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def processes_in(root: Path) -> list[psutil.Process]:
    """Processes whose root directory is ``root``: everything started inside the chroot."""
    try:
        want = Path(root).stat()
    except FileNotFoundError:
        return []
    found = []
    for proc in psutil.process_iter():
        try:
            st = Path(f"/proc/{proc.pid}/root").stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            found.append(proc)
    return found


def kill_all(root: Path, timeout: float = 10) -> list[str]:
    """SIGKILL every process in the chroot; their names, for the failure message of a test that left them."""
    procs = processes_in(root)
    names = []
    for proc in procs:
        try:
            names.append(f"{proc.name()} (pid {proc.pid})")
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)
    return names


def unmount_all(root: Path) -> None:
    for point in mounts_under(root):
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            # Busy (a process we could not kill yet, an open file): detach now, the kernel finishes later.
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"could not unmount {', '.join(map(str, left))}")


def remove_root(root: Path) -> None:
    """Delete a root, never through a mount (a bind of /dev or a cache would be emptied with it)."""
    kill_all(root)
    unmount_all(root)
    shutil.rmtree(root, ignore_errors=True)


def clean_stale() -> None:
    """Roots a killed test run left behind: their processes, mounts and files."""
    for root in ROOTS_DIR.glob(f"{ROOT_PREFIX}*"):
        remove_root(root)


class FreshRoot:
    """One pristine Debian 12 root: extracted from the cached tarball, mounted, and removed by ``close()``."""

    def __init__(self, tarball: Path, host: HostNetwork) -> None:
        self.host = host
        self.path = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=ROOTS_DIR))
        self.path.chmod(0o755)
        try:
            subprocess.run(["tar", "-C", str(self.path), "--numeric-owner", "-xpf", str(tarball)], check=True)
            # The root's DNS: the host's, as on a VM whose network is configured.
            shutil.copyfile("/etc/resolv.conf", self.path / "etc/resolv.conf")
            # The local certificate authorities this network needs (it may inspect TLS): a VM on it would have
            # them too. ca-certificates, which install.sh installs, adds them to the root's trust store.
            local_cas = self.path / "usr/local/share/ca-certificates"
            local_cas.mkdir(parents=True, exist_ok=True)
            for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
                shutil.copyfile(ca, local_cas / ca.name)
            self._mount()
        except BaseException:
            remove_root(self.path)
            raise

    def _mount(self) -> None:
        p = self.path
        apt_cache = CACHE_DIR / "apt-archives"
        pip_cache = CACHE_DIR / "pip"
        for cache in (apt_cache / "partial", pip_cache):
            cache.mkdir(parents=True, exist_ok=True)
        (p / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
        commands = [
            ["mount", "-t", "proc", "proc", str(p / "proc")],
            # Recursive binds (/dev/pts, /dev/shm for multiprocessing's semaphores), made slaves so that
            # unmounting them here never unmounts anything on the host.
            ["mount", "--rbind", "/sys", str(p / "sys")],
            ["mount", "--make-rslave", str(p / "sys")],
            ["mount", "--rbind", "/dev", str(p / "dev")],
            ["mount", "--make-rslave", str(p / "dev")],
            # A fresh /run, as after a boot: no /run/systemd/system, so systemd is not running here.
            ["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", str(p / "run")],
            ["mount", "--bind", str(apt_cache), str(p / "var/cache/apt/archives")],
            ["mount", "--bind", str(pip_cache), str(p / "root/.cache/pip")],
        ]
        for argv in commands:
            subprocess.run(argv, check=True, capture_output=True)

    def run(
        self,
        argv: Sequence[str],
        *,
        host_network: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        check: bool = False,
        input: str | None = None,
        wrap: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the root as root, with a fresh box's environment; in the host's network when asked.
        ``input`` is its standard input (else none); ``wrap`` runs it under a host command (``strace -f ...``)."""
        command = [*wrap, "chroot", str(self.path), *argv]
        if host_network:
            command = self.host.wrap(command)
        return subprocess.run(
            command,
            env={**CHROOT_ENV, **(env or {})},
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            pass_fds=self.host.pass_fds if host_network else (),
        )

    def copy_in(self, source: Path, inside: str, mode: int | None = None) -> Path:
        target = self.path / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        if mode is not None:
            target.chmod(mode)
        return target

    def copy_checkout(self, checkout: Path, inside: str) -> Path:
        """The work tree as git sees it, into the root."""
        return copy_work_tree(self.path / inside.lstrip("/"), checkout)

    def processes(self) -> list[psutil.Process]:
        return processes_in(self.path)

    def wait_no_processes(self, timeout: float) -> None:
        wait_until(lambda: not self.processes(), timeout, f"every process in {self.path} to exit")

    def exists(self, inside: str) -> bool:
        return (self.path / inside.lstrip("/")).exists() or (self.path / inside.lstrip("/")).is_symlink()

    def close(self) -> list[str]:
        """Kill what still runs, unmount, delete; the names of the processes that had to be killed."""
        killed = kill_all(self.path)
        deadline = time.monotonic() + 5
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        unmount_all(self.path)
        shutil.rmtree(self.path, ignore_errors=True)
        return killed
