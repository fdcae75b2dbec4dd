"""Who made an artifact folder: a digest the user pins, or an HMAC by the user's artifact key.

A folder's identity is the SHA-256 of its ``manifest.json`` (the manifest lists the SHA-256 of
every other file, so this one digest covers the whole folder, as an OCI image digest covers its
layers).  ``convdsl compile`` prints it; ``convdsl run FOLDER --expect-sha256 DIGEST`` refuses any
other folder.  Without a pin, a folder is trusted when ``manifest.sig`` holds an HMAC-SHA256 of
the manifest under the user's artifact key: ``compile`` signs every folder it writes with that
key (made on first use, 0600, in ``~/.config/convdsl/artifact.key`` or ``$CONVDSL_ARTIFACT_KEY``;
a team that shares the key file shares trust).  Anyone without the key can change a folder and
recompute every hash in its manifest, but not the HMAC.  See docs/artifacts.md.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from convdsl.errors import ArtifactError, UsageError

KEY_ENV = "CONVDSL_ARTIFACT_KEY"
SIGNATURE = "manifest.sig"
ALGORITHM = "hmac-sha256"
_DOMAIN = b"convdsl artifact manifest v2\0"  # an HMAC made for anything else never verifies here
_MAX_KEY_BYTES = 4096
_MAX_SIGNATURE_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")


def digest_of(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def parse_digest(text: str) -> str:
    """``--expect-sha256``: 64 hex digits, optionally written ``sha256:...``."""
    d = text.strip().lower()
    d = d[len("sha256:"):] if d.startswith("sha256:") else d
    if not _HEX64.fullmatch(d):
        raise UsageError(f"--expect-sha256 takes the artifact digest (64 hex digits), got {text[:80]!r}",
                         hint="use the 'artifact sha256' line that convdsl compile printed")
    return d


def key_path() -> Path | None:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base:
        try:
            base = str(Path.home() / ".config")
        except (RuntimeError, KeyError):  # no home folder
            return None
    return Path(base) / "convdsl" / "artifact.key"


def load_key(create: bool = False) -> tuple[bytes, Path] | None:
    """The user's artifact key and its path; None when there is none (and ``create`` is False or
    it cannot be made here).  A key that others may read or write is refused, as ssh refuses
    such a private key: whoever reads it can sign folders this user will run."""
    path = key_path()
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return _create_key(path) if create else None
    except OSError as e:
        raise ArtifactError(f"cannot read the artifact key {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"the artifact key {path} is not a regular file")
        if st.st_mode & 0o077 or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
            raise ArtifactError(f"the artifact key {path} may be read or changed by other users",
                                got=f"mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}",
                                hint=f"chmod 600 {path} (and own it), or make a new key by removing it")
        data = os.read(fd, _MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    key = data.strip()
    if not 32 <= len(key) <= _MAX_KEY_BYTES:
        raise ArtifactError(f"the artifact key {path} holds {len(key)} bytes", expected="32 to 4096 bytes",
                            hint="remove it; convdsl compile makes a new one")
    return key, path


def _create_key(path: Path) -> tuple[bytes, Path] | None:
    """A new random key, made atomically: a second process at the same moment reads the first one's."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError:
        return None  # a read-only home: folders are written unsigned, and run needs --expect-sha256
    return load_key()


def key_id(key: bytes) -> str:
    """A short public name of a key (never the key): in signatures and messages."""
    return hashlib.sha256(b"convdsl artifact key id\0" + key).hexdigest()[:16]


def signature(manifest_bytes: bytes, key: bytes) -> dict[str, str]:
    mac = hmac.new(key, _DOMAIN + manifest_bytes, hashlib.sha256).hexdigest()
    return {"algorithm": ALGORITHM, "key_id": key_id(key), "hmac": mac}


def write_signature(folder: Path, manifest_bytes: bytes) -> str | None:
    """Sign a manifest just written with the user's key (made if missing); the key id, or None
    when there is no key to sign with."""
    found = load_key(create=True)
    if found is None:
        return None
    sig = signature(manifest_bytes, found[0])
    (folder / SIGNATURE).write_text(json.dumps(sig, indent=2) + "\n")
    return sig["key_id"]


def check_signature(folder: Path, manifest_bytes: bytes) -> tuple[bool, str]:
    """(signed by the user's key, why or why not).  A signature made with the user's key that does
    not verify means the manifest changed after signing: that is refused outright."""
    path = folder / SIGNATURE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False, "it has no signature (manifest.sig)"
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_SIGNATURE_BYTES:
        raise ArtifactError(f"{path} is not a signature file",
                            got="a link or special file" if not stat.S_ISREG(st.st_mode) else f"{st.st_size:,} bytes")
    sig = _read_signature(path)
    found = load_key()
    if found is None:
        return False, "there is no artifact key here to check its signature with"
    key, kpath = found
    if sig["key_id"] != key_id(key):
        return False, f"it was signed with another key (id {sig['key_id']}), not yours ({key_id(key)}, {kpath})"
    if not hmac.compare_digest(sig["hmac"], signature(manifest_bytes, key)["hmac"]):
        raise ArtifactError(f"{folder} was changed after it was signed: manifest.json does not match manifest.sig",
                            hint="recompile it; never run a folder you did not make or pin")
    return True, f"signed with your artifact key ({key_id(key)})"


def _read_signature(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            data = os.read(fd, _MAX_SIGNATURE_BYTES + 1)
        finally:
            os.close(fd)
        sig = json.loads(data.decode("utf-8"))
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ArtifactError(f"{path} is not a convdsl signature (not JSON)") from None
    ok = (isinstance(sig, dict) and sig.get("algorithm") == ALGORITHM and isinstance(sig.get("key_id"), str)
          and isinstance(sig.get("hmac"), str) and _HEX64.fullmatch(sig["hmac"]) is not None)
    if not ok:
        raise ArtifactError(f"{path} is not a convdsl signature",
                            expected='{"algorithm": "hmac-sha256", "key_id": "...", "hmac": "<64 hex digits>"}')
    return sig
