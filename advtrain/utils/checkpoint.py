"""Checkpoints: one versioned dict, written atomically, verified by a checksum, loaded without pickled code.

Why this shape:
- `torch.save` of plain containers of tensors/str/int/float/bool/None loads with `weights_only=True`, so loading a
  checkpoint never executes code; anything else is refused at save time and at load time.
- A crash mid-write must never destroy the previous good checkpoint: we write to a temporary file in the same
  directory, fsync it, then `os.replace` it over the target (atomic on POSIX), and fsync the directory.
- A truncated or bit-flipped file must be detected, not silently loaded: the dict carries a SHA-256 over its
  tensors and values (computed in a fixed traversal order), verified on load.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from advtrain.errors import CheckpointError
from advtrain.utils.hashing import update_with_tensor

FORMAT = "advtrain-checkpoint"
VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes from every key, repeatedly."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key = key[len(p) :]
                    changed = True
        out[key] = value
    return out


def _update_digest(h: Any, obj: Any, path: str = "") -> None:
    """Feed `obj` into the hash in a deterministic order; refuse types that need pickled code to load."""
    if isinstance(obj, torch.Tensor):
        update_with_tensor(h, obj, f"{path}:T:")
    elif isinstance(obj, Mapping):
        h.update(f"{path}:D{len(obj)}".encode())
        for k in sorted(obj, key=str):
            _update_digest(h, obj[k], f"{path}/{k}")
    elif isinstance(obj, list | tuple):
        h.update(f"{path}:L{len(obj)}".encode())
        for i, v in enumerate(obj):
            _update_digest(h, v, f"{path}[{i}]")
    # Exact types: subclasses need pickling.
    elif obj is None or type(obj) in (bool, int, float, str):
        h.update(f"{path}:{type(obj).__name__}:{obj!r}".encode())
    else:
        raise CheckpointError(
            f"checkpoint value at '{path or '/'}' has type {type(obj).__name__}, which cannot be loaded "
            "with weights_only=True; store tensors, numbers, strings, lists or dicts only"
        )


def checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 of everything in `payload` except the `checksum` key itself."""
    h = hashlib.sha256()
    _update_digest(h, {k: v for k, v in payload.items() if k != "checksum"})
    return h.hexdigest()


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either the old or the complete new content, never a torn one.

    `write(f)` fills a temporary file in the same directory; it is fsynced and renamed over `path`, and the
    directory is fsynced so the rename itself survives a power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask), like
        # every other file of a run directory.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not allow fsync on directories
        pass
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """`atomic_write` for bytes or text (UTF-8)."""
    payload = data.encode() if isinstance(data, str) else data
    return atomic_write(path, lambda f: f.write(payload))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save` through `atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write `payload` atomically to `path` with format/version/checksum fields added; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(payload)
    data["format"] = FORMAT
    data["version"] = VERSION
    data["checksum"] = checksum(data)
    atomic_write(path, lambda f: torch.save(data, f))
    return path


#: How a file written by torch.save starts: a zip archive (the format since PyTorch 1.6) or a pickle
#: (the legacy format; protocol 2+ starts with 0x80).
_ZIP_MAGIC = b"PK\x03\x04"
_FIX = (
    "pass a .pt file written by advtrain or torch.save (last.pt, best.pt or checkpoints/step_*.pt)"
)


def _not_torch(path: Path) -> str | None:
    """Why `path` cannot be a torch.save file, judged from its first bytes; None if it may be one."""
    with open(path, "rb") as f:
        head = f.read(256)
    if not head:
        return f"checkpoint {path} is empty (0 bytes: a write that never finished); {_FIX}"
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        return None
    if not head.strip(b"\x00"):
        return (
            f"checkpoint {path} is truncated or corrupt (it starts with zero bytes, as a file "
            f"allocated but never written); {_FIX}"
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[: len(head) - 3].decode("utf-8", errors="replace")
        if text.count("\ufffd") > 2:
            return f"checkpoint {path} is not a PyTorch checkpoint (unknown binary content); {_FIX}"
    kind = "JSON" if text.lstrip()[:1] in ("{", "[") else "text"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"checkpoint {path} is not a PyTorch checkpoint: it holds {kind} ({first!r}); {_FIX}"


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load(weights_only=True)` whose every failure on a file's content is a CheckpointError."""
    try:
        reason = _not_torch(path)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if reason is not None:
        raise CheckpointError(reason)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        if not lines:  # not a forbidden class: the pickle stream itself is damaged
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt (its pickle stream does not load)"
            ) from None
        first = lines[0].split(" was not")[0]
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects that weights_only=True does not "
            f"allow ({first[:200]}); only load such a file if you trust it, and re-save it as tensors"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... on damaged archives
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {first[:120]})"
        ) from None


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu", verify: bool = True
) -> dict[str, Any]:
    """Load an advtrain checkpoint with `weights_only=True` and verify its checksum.

    Raises CheckpointError (one line) for a missing, truncated, corrupt, foreign or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = _torch_load(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an advtrain checkpoint (no format='{FORMAT}' field); for a plain state dict "
            "use `model=NAME ckpt=PATH` in eval"
        )
    if data.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {data['version']}, newer than this advtrain ({VERSION})"
        )
    if verify and data.get("checksum") != checksum(data):
        raise CheckpointError(f"checkpoint {path} failed its checksum: the file is corrupt")
    return data


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a plain (possibly wrapped) state dict safely: `{'state_dict': sd}`, `{'model': sd}` or `sd`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = _torch_load(path, "cpu")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return dict(data["model"])
    for key in ("state_dict", "model", "net", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return strip_prefixes(data)


def serialized_size(payload: Mapping[str, Any]) -> int:
    """Bytes `torch.save` would write for `payload` (used by tests and the benchmark)."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    return buf.tell()


def _step_from_name(path: Path) -> int | None:
    """`step_000000123.pt` -> 123 (the trainer's naming); None for any other name."""
    match = re.fullmatch(r"step_(\d+)\.pt", path.name)
    return int(match.group(1)) if match else None


def find_latest_valid(run_dir: str | os.PathLike[str], pattern: str = "*.pt") -> Path | None:
    """The newest checkpoint in `run_dir` (by its stored step) that loads and verifies; None if there is none.

    Corrupt or truncated files are skipped (with their error logged) so `resume=auto` falls back to the previous
    good checkpoint. Files named `step_N.pt` are tried newest first and the first that verifies wins, so a large
    model's older checkpoints are not read at all; any other name is loaded to learn its step. Hidden files (our
    temporary files of an interrupted write) are ignored.
    """
    import logging

    log = logging.getLogger(__name__)
    named: list[tuple[int, float, Path]] = []
    best: tuple[int, float, Path] | None = None
    for p in Path(run_dir).glob(pattern):
        if p.name.startswith(".") or not p.is_file():
            continue
        step = _step_from_name(p)
        if step is not None:
            named.append((step, p.stat().st_mtime, p))
            continue
        try:
            data = load_checkpoint(p)
        except CheckpointError as e:
            log.warning("skipping %s: %s", p, e)
            continue
        key = (int(data.get("step", -1)), p.stat().st_mtime, p)
        if best is None or key[:2] > best[:2]:
            best = key
    for key in sorted(named, key=lambda k: k[:2], reverse=True):
        if best is not None and key[:2] <= best[:2]:
            break
        try:
            data = load_checkpoint(key[2])
        except CheckpointError as e:
            log.warning("skipping %s: %s", key[2], e)
            continue
        stored = (int(data.get("step", key[0])), key[1], key[2])
        if best is None or stored[:2] > best[:2]:
            best = stored
        break
    return None if best is None else best[2]
