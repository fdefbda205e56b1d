"""sha256 digests without OpenSSL: hashlib maps libcrypto (about 3.6 MiB resident in the daemon) for a
few short names (the farm's cgroup, socket paths, the registry key) and launch fingerprints.

CPython's own sha256 gives the same digests (names stay stable across versions and upgrades); hashlib
is the fallback where that module is missing.
"""

from __future__ import annotations

from typing import Any, Callable


def _sha256() -> Callable[[bytes], Any]:
    try:
        from _sha2 import sha256  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.10, 3.11
        except ImportError:  # pragma: no cover - a build without CPython's own sha256
            from hashlib import sha256
    return sha256


sha256 = _sha256()


def sha256_hex(data: bytes, length: int = 64) -> str:
    """The first `length` hex digits of data's sha256 (the same as hashlib's)."""
    return sha256(data).hexdigest()[:length]
