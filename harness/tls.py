"""A certificate authority of the tests' own and a server certificate it signs, made with the openssl command line,
for Redis and PostgreSQL served over TLS (as shared stores elsewhere are)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class TestCA:
    """``ca.pem`` and ``server.pem``/``server.key`` for ``localhost`` and 127.0.0.1, in a directory of its own."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, name: str = "appliance test CA") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="appliance-ca-"))
        self.dir.chmod(0o755)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                 "-keyout", "ca.key", "-out", "ca.pem", cwd=self.dir)  # fmt: skip
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
                 "-out", "server.csr", cwd=self.dir)  # fmt: skip
        (self.dir / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=self.dir)  # fmt: skip
        for name_ in ("ca.pem", "server.pem"):
            (self.dir / name_).chmod(0o644)

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.dir / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.dir / "server.key"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
