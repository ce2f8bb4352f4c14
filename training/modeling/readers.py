"""Reading checkpoint and label files without ever executing code from them.

Every published weight format arrives as one of three containers: a torch zip archive (read with
``torch.load(weights_only=True)``), a pickle (PaddleVideo ``.pdparams`` through :class:`RestrictedUnpickler`,
which admits numpy's array reconstruction and nothing else, or a legacy torch file), or a safetensors file
(the ``safetensors`` package, no pickle). :func:`read_checkpoint_file` tells them apart by their first bytes.
What the tensors inside mean is :mod:`training.modeling.formats`' job.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# What torch's legacy (pre-zip) serialization writes as its first pickle.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class ConvertError(ValueError):
    """A file that is not a usable checkpoint of a known format; the message names the key/shape at fault."""


# ------------------------------------------------------------------------------------------------------------
# Reading files safely
# ------------------------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for PaddleVideo ``.pdparams``: admits only numpy's array/dtype/scalar reconstruction and
    ``OrderedDict``; any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is refused
    *before* it can be called, with an error naming it."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("collections", "OrderedDict"),
            # Protocol-2 pickles (older Paddle) wrap raw array bytes as _codecs.encode(text, 'latin1').
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise ConvertError(
                f"refused pickle global {module}.{name}: a .pdparams file holds only numpy arrays "
                "(this file would run code when loaded)"
            )
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            # numpy 2 renamed numpy.core -> numpy._core; files written by either load under both.
            alt = (
                module.replace("numpy._core", "numpy.core")
                if "_core" in module
                else module.replace("numpy.core", "numpy._core")
            )
            return super().find_class(alt, name)


def restricted_pickle_load(data: bytes, source: str = "<bytes>") -> Any:
    """Load a pickle through :class:`RestrictedUnpickler`; truncated or malformed data -> ConvertError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except ConvertError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ConvertError(f"{source}: not a readable pickle (truncated or corrupt): {exc}") from exc


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code. numpy scalars and
    dtypes (found in some training frameworks' metadata) are admitted as well."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "numpy" not in str(exc):
            raise ConvertError(f"{path}: refused by the safe loader: {str(exc).splitlines()[0]}") from exc
    np_globals: list[Any] = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or np.core
    np_globals += [core.multiarray.scalar, core.multiarray._reconstruct]
    np_globals += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1", "b1")]
    try:
        with torch.serialization.safe_globals(np_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConvertError(f"{path}: refused by the safe loader: {str(exc).splitlines()[0]}") from exc


def read_checkpoint_file(path: str | Path) -> Any:
    """Load a checkpoint file of any supported kind without ever executing code from it.

    A zip file is a torch checkpoint (``torch.load(weights_only=True)``); a pickle is a ``.pdparams``
    (restricted unpickler) or a legacy torch file (recognised by its magic number); a safetensors file (an
    8-byte header length, then a JSON header) is read by the ``safetensors`` package. Anything else is
    refused.
    """
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path}: no such file")
    if not path.is_file():
        raise ConvertError(f"{path}: not a file")
    data = path.read_bytes()
    if not data:
        raise ConvertError(f"{path}: empty file")
    if data[:4] == b"PK\x03\x04":
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise ConvertError(f"{path}: truncated or corrupt torch checkpoint (broken zip archive)")
        try:
            return _torch_load(path)
        except ConvertError:
            raise
        except Exception as exc:  # torch raises RuntimeError and friends for damaged archives
            raise ConvertError(
                f"{path}: truncated or corrupt torch checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    if data[:1] == b"\x80":  # pickle protocol >= 2
        obj = restricted_pickle_load(data, str(path))
        if obj == _TORCH_LEGACY_MAGIC:
            try:
                return _torch_load(path)
            except ConvertError:
                raise
            except Exception as exc:
                raise ConvertError(
                    f"{path}: corrupt legacy torch checkpoint ({type(exc).__name__}: {exc})"
                ) from exc
        return obj
    if len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        return read_safetensors(path)
    raise ConvertError(
        f"{path}: not a checkpoint (neither a torch zip archive nor a pickle; starts {data[:8]!r})"
    )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file (no pickle involved); a damaged file -> ConvertError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ConvertError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_label_file(path: str | Path) -> list[str]:
    """Class names from ``id name`` lines (PaddleVideo/Kinetics, 0-based), ``classInd.txt`` (``1 Name``,
    UCF-101, 1-based) or one name per line. Ids must cover 0..n-1 or 1..n exactly once."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path}: cannot read label file ({exc})") from exc
    from training.data.lists import DatasetError, parse_label_lines

    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConvertError(f"{path}: empty label file")
    if all(len(p) == 2 and p[0].isdigit() for p in (ln.split(maxsplit=1) for ln in lines)):
        try:
            return parse_label_lines(lines, str(path))
        except DatasetError:
            pass  # ids that do not run 0..N-1 / 1..N: the lines are names that start with a number
    if len(set(lines)) != len(lines):
        dup = next(x for x in lines if lines.count(x) > 1)
        raise ConvertError(f"{path}: duplicate label {dup!r}")
    return lines
