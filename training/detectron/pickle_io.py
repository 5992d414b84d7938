"""Reading Detectron (Caffe2) weights files without running anything in them.

A Detectron weights file (``lib/utils/net.py`` ``save_model_to_weights_file``) is a Python 2
pickle of ``{'blobs': {name: ndarray}, 'cfg': yaml_text}`` (older files: the blob dict
alone). Detectron writes it at the highest protocol of Python 2 (2); a file that went through
a plain ``pickle.dump`` afterwards (as the authors' class-surgery scripts do) is protocol 0.

A pickle is a program: unpickling an arbitrary file can run any callable it names. The
unpickler here resolves exactly the callables that rebuild numpy arrays and their dtypes
(:data:`ALLOWED_GLOBALS`) and refuses everything else with the ``module.name`` it asked for,
before anything is called. The config is YAML written with Python tags (Detectron's
``AttrDict``, numpy arrays, Python 2 unicode and tuples); :func:`read_cfg` reads it into plain
mappings, sequences and scalars without building any object.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

__all__ = [
    "ALLOWED_GLOBALS",
    "DetectronFileError",
    "DetectronWeights",
    "load_detectron_pickle",
    "read_cfg",
]

#: (module, name) → object: all a Detectron weights pickle needs. ``_reconstruct`` makes an
#: empty ndarray that ``__setstate__`` fills from the pickled bytes; ``ndarray`` is its first
#: argument; ``dtype`` rebuilds the element type. Python 2 and numpy 1 name the module
#: ``numpy.core.multiarray``, numpy 2 ``numpy._core.multiarray``. Nothing else of numpy is
#: allowed: some numpy functions run code (``numpy.testing._private.utils.runstring`` is
#: ``exec``).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class DetectronFileError(ValueError):
    """A Detectron weights file cannot be read or holds something it should not; the message
    names the file and the offending entry."""


@dataclass(frozen=True)
class DetectronWeights:
    """The content of a Detectron weights file.

    Attributes:
        blobs: blob name → array (as stored: float32 in Detectron files, any shape).
        cfg_text: the YAML text of the training config, or None (older files have none).
        protocol: the pickle protocol the file was written with (0, 1 or 2 for Python 2).
    """

    blobs: dict[str, np.ndarray]
    cfg_text: str | None
    protocol: int


class _WeightsUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`.

    Python 2 ``str`` (byte strings: blob names, the array bytes) are decoded as latin-1, which
    maps every byte to one character and back, so that numpy gets its bytes unchanged.
    """

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # Called for every GLOBAL/STACK_GLOBAL/INST/OBJ/EXT opcode with the names exactly as
        # written (Python 2 module names are not remapped before this point).
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DetectronFileError(
                f"{str(self._path)!r}: refusing to load: the pickle asks for "
                f"{module}.{name}, which a Detectron weights file never holds (only numpy "
                "arrays); unpickling it could run code. Nothing from the file was run."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DetectronFileError(
            f"{str(self._path)!r}: refusing to load: the pickle uses a persistent id, which a "
            "Detectron weights file never holds"
        )


def _protocol(head: bytes) -> int:
    """The protocol a pickle starts with: PROTO's argument, else 0/1 (no PROTO opcode)."""
    return head[1] if len(head) >= 2 and head[0] == 0x80 else 0


def load_detectron_pickle(path: str | os.PathLike) -> DetectronWeights:
    """Read a Detectron weights file safely (see the module docstring).

    Raises:
        DetectronFileError: missing or unreadable file, a global outside
            :data:`ALLOWED_GLOBALS`, or content that is not a blob dict (the message names the
            file and the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise DetectronFileError(f"Detectron weights file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        protocol = _protocol(f.read(2))
        f.seek(0)
        try:
            data = _WeightsUnpickler(f, path).load()
        except DetectronFileError:
            raise
        except Exception as exc:  # truncated, not a pickle, a bad opcode, a bad array state
            raise DetectronFileError(
                f"{str(path)!r} is not a readable Detectron weights pickle: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(data, dict):
        raise DetectronFileError(
            f"{str(path)!r}: expected a dict {{'blobs': ..., 'cfg': ...}}, got {type(data).__name__}"
        )
    cfg_text = None
    if "blobs" in data:
        blobs = data["blobs"]
        cfg = data.get("cfg")
        if isinstance(cfg, bytes):
            cfg = cfg.decode("latin1")
        if cfg is not None and not isinstance(cfg, str):
            raise DetectronFileError(
                f"{str(path)!r}: 'cfg' should be YAML text, got {type(cfg).__name__}"
            )
        cfg_text = cfg
        extra = sorted(str(k) for k in data if k not in ("blobs", "cfg"))
        if extra:
            raise DetectronFileError(
                f"{str(path)!r}: unexpected top-level entries {extra} (expected 'blobs', 'cfg')"
            )
    else:  # Detectron's older layout: the blob dict itself
        blobs = data
    if not isinstance(blobs, dict):
        raise DetectronFileError(
            f"{str(path)!r}: 'blobs' should be a dict, got {type(blobs).__name__}"
        )
    out: dict[str, np.ndarray] = {}
    for name, value in blobs.items():
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if not isinstance(name, str):
            raise DetectronFileError(f"{str(path)!r}: blob name {name!r} is not a string")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            what = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise DetectronFileError(
                f"{str(path)!r}: blob {name!r} should be a numeric array, got {what}"
            )
        out[name] = value
    return DetectronWeights(out, cfg_text, protocol)


# -- the config: tagged YAML read as plain data -----------------------------------------------

_PY = "tag:yaml.org,2002:python/"


class PlainCfgLoader(yaml.SafeLoader):
    """A safe YAML loader that reads every tag as plain data and builds no object.

    ``!!python/object/new:…AttrDict`` (a mapping with ``dictitems``) becomes its items;
    any other tagged mapping, sequence or scalar becomes a dict, list or string (Python
    numbers, bools and None their values). For cross-checks only: nothing read here decides
    the model, the weights' shapes do.
    """


def _construct_tagged(loader: PlainCfgLoader, tag_suffix: str, node: yaml.Node) -> Any:
    tag = node.tag
    if isinstance(node, yaml.MappingNode):
        mapping = loader.construct_mapping(node, deep=True)
        if tag.startswith(_PY + "object") and isinstance(mapping.get("dictitems"), dict):
            return dict(mapping["dictitems"])
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    kind = tag[len(_PY) :] if tag.startswith(_PY) else ""
    try:
        if kind in ("int", "long"):
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        return value
    if kind == "bool":
        return loader.construct_yaml_bool(node)
    if kind == "none":
        return None
    return value


PlainCfgLoader.add_multi_constructor("", _construct_tagged)


def read_cfg(text: str) -> dict[str, Any]:
    """The config of a weights file as nested plain dicts (``cfg["MODEL"]["NUM_CLASSES"]``).

    Raises:
        ValueError: the text is not YAML or not a mapping at the top.
    """
    try:
        cfg = yaml.load(text, Loader=PlainCfgLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"the weights file's cfg is not readable YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"the weights file's cfg should be a mapping, got {type(cfg).__name__}")
    return cfg


def cfg_array(value: Any) -> np.ndarray | None:
    """A numpy array that Detectron's cfg holds as a tagged ``_reconstruct`` call (e.g.
    ``PIXEL_MEANS``), read from its plain-data form; None when ``value`` is not one."""
    try:
        state = value["state"]
        shape, dtype, data = tuple(state[1]), state[2], state[4]
        if isinstance(dtype, dict):
            dtype = dtype["args"][0]
        if isinstance(data, str):
            data = data.encode("latin1")
        return np.frombuffer(data, dtype=np.dtype(str(dtype)).newbyteorder("<")).reshape(shape)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
