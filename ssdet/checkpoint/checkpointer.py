"""ssdet's checkpointer: Detectron2's ``DetectionCheckpointer`` that runs no code from a file.

Every checkpoint ssdet reads (``MODEL.WEIGHTS``, ``--resume``, the teacher of the pseudo labels,
``SSDET.EXPERIMENT.TEACHER_WEIGHTS``) goes through :class:`SsdetCheckpointer`:

- ``.pkl`` files (Detectron2's and Detectron1's model zoo) are read by a restricted unpickler that
  builds numpy arrays, dicts, lists, tuples, strings, bytes and numbers only. Detectron2 uses
  plain ``pickle.load``, which runs whatever a pickle names (``os.system``...).
- Everything else is read with ``torch.load(..., weights_only=True)``.
- A missing, truncated, text or non-checkpoint file is an :class:`~ssdet.utils.errors.InputError`.
- ``<name>.pth`` and the ``last_checkpoint`` tag are written atomically (temporary file, fsync,
  rename): a kill leaves the previous file, never a truncated one.
- On resume, an empty or dangling ``last_checkpoint`` (naming a missing or unloadable file) falls
  back to the newest ``model_*.pth`` that loads, with a warning.

Trainers get it through :class:`SsdetCheckpointerMixin`.
"""

import codecs
import glob
import logging
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open
from ssdet.utils.run_dir import MODEL_FINAL

__all__ = [
    "fetch_checkpoint",
    "FINAL_CHECKPOINT",
    "SsdetCheckpointer",
    "SsdetCheckpointerMixin",
    "is_loadable_checkpoint",
    "load_checkpoint_file",
    "load_torch_file",
    "load_weights_pickle",
]

logger = logging.getLogger(__name__)

# What Detectron2's PeriodicCheckpointer writes after the last iteration.
FINAL_CHECKPOINT = MODEL_FINAL
# Detectron2's periodic checkpoints, model_<iteration, 7 digits>.pth, and the final one.
_PERIODIC_CHECKPOINT = re.compile(r"model_(\d+|final)\.pth")
_TAG_FILE = "last_checkpoint"

# The globals a pickle of numpy arrays and plain containers names (numpy 1.x and 2.x module
# paths; Python 2 pickles name builtins "__builtin__"). Nothing here runs code or touches files.
_NUMPY_CORES = ("numpy.core", "numpy._core")
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *((f"{core}.multiarray", "_reconstruct") for core in _NUMPY_CORES),
        *((f"{core}.multiarray", "scalar") for core in _NUMPY_CORES),
        *((f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORES),
        ("collections", "OrderedDict"),
        *(
            (builtins, name)
            for builtins in ("builtins", "__builtin__")
            for name in ("complex", "set", "frozenset", "bytes", "bytearray")
        ),
    }
)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes for protocols < 3 as _codecs.encode(text, "latin1"); the codec is
    # fixed here so that a pickle cannot pick another one.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


class _WeightsUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_ALLOWED_GLOBALS`; any other name is refused."""

    def __init__(self, file, path: str):
        # latin1, as Detectron2: Python 2 pickles (Detectron1's model zoo) hold numpy buffers as
        # byte strings.
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise InputError(
            f"Refused to load {self.path!r}: the pickle calls {module}.{name}. A .pkl checkpoint "
            "may hold only numpy arrays, dicts, lists, tuples, strings and numbers, because "
            "loading a pickle runs every function it names. Convert a file you trust into plain "
            "weights, e.g. torch.save({'model': state_dict}, 'weights.pth')."
        )


def load_weights_pickle(path: str) -> Any:
    """Read a pickle of numpy arrays and plain containers, refusing anything else.

    Args:
        path: a local ``.pkl`` file, e.g. one of Detectron2's model zoo.

    Returns:
        The unpickled object (dicts, lists, tuples, strings, bytes, numbers, None, ``OrderedDict``
        and numpy arrays, dtypes and scalars).

    Raises:
        InputError: the pickle names any other global (nothing it names is called), or the file
            is missing or no pickle.
    """
    _check_file(path)
    try:
        with open(path, "rb") as f:
            return _WeightsUnpickler(f, path).load()
    except InputError:
        raise
    # Bytes that are no pickle of weights fail in any way: UnpicklingError, EOFError, an allowed
    # constructor's TypeError on odd arguments, ImportError for another numpy's module path, ...
    except Exception as e:
        raise InputError(
            f"Cannot read checkpoint {path!r} as a pickle of weights "
            f"({type(e).__name__}: {_first_line(e)})."
        ) from e


def load_torch_file(path: str, trust_pickle: bool = False, hint: str = "") -> Any:
    """``torch.load`` on the CPU, ``weights_only`` unless the caller trusts the file.

    Args:
        path: a local file written by ``torch.save``.
        trust_pickle: load with ``weights_only=False``; only for files you trust.
        hint: appended to the message when ``weights_only`` refuses the file.

    Raises:
        InputError: the file is missing, truncated, no ``torch.save`` file, or (``weights_only``)
            pickles Python objects other than tensors and plain types.
    """
    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"Cannot read checkpoint {path!r} as PyTorch weights: {_first_line(e)}.{hint}"
        ) from e
    # Bytes that are no torch.save file fail wherever the reader trips (EOFError, RuntimeError,
    # IndexError, KeyError, struct.error, ...): every failure is "not a readable file".
    except Exception as e:
        raise InputError(
            f"Cannot read checkpoint {path!r}: not a readable PyTorch file "
            f"({type(e).__name__}: {_first_line(e) or 'no details'})."
        ) from e


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Read a checkpoint file as :class:`SsdetCheckpointer` does, without a model to load into.

    Args:
        path: a local ``.pth`` (``torch.save``), ``.pkl`` (Detectron2 or Detectron1 model zoo) or
            ``.pyth`` (pycls) file.

    Returns:
        ``{"model": {name: tensor or numpy array}, ...}`` in Detectron2's layout (a bare state
        dict is put under "model"; model-zoo files get Detectron2's ``__author__`` and
        ``matching_heuristics`` keys).

    Raises:
        InputError: see :func:`load_weights_pickle` and :func:`load_torch_file`; or the file
            holds no weights.
    """
    if path.endswith(".pkl"):
        checkpoint = _model_zoo_checkpoint(load_weights_pickle(path), path)
    elif path.endswith(".pyth"):
        checkpoint = _pycls_checkpoint(_torch_checkpoint(path), path)
    else:
        checkpoint = _torch_checkpoint(path)
        if "model" not in checkpoint:
            checkpoint = {"model": checkpoint}
    _check_weights(checkpoint["model"], path)
    return checkpoint


def fetch_checkpoint(path: str, what: str) -> str:
    """A checkpoint as a local file that loads: Detectron2's ``PathManager`` fetches a URL once,
    then the file is read once (:func:`load_checkpoint_file`), so that a missing, unreadable or
    refused file is one error here, before any worker or training starts.

    Args:
        path: the checkpoint's path or URL.
        what: how the error names it, e.g. ``"teacher checkpoint MODEL.WEIGHTS"``.

    Returns:
        The absolute local path.
    """
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # any download or handler failure means: no checkpoint to read
        raise InputError(f"Cannot fetch the {what} {path!r}: {e}") from e
    if not os.path.isfile(local):
        raise InputError(f"The {what} {path!r} is not found.")
    load_checkpoint_file(local)
    return os.path.abspath(local)


def is_loadable_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` checkpoint with a ``"model"`` dict of tensors.

    Cheap: the file's index is read and its tensors are memory-mapped, not loaded. An empty or
    truncated file (a kill while it was written) fails, since a zip's index is at its end.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        _check_weights(checkpoint["model"], path)
    except Exception:  # any failure to read means: no checkpoint to resume from
        return False
    return True


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"Checkpoint {path!r} not found.")
    if not os.path.isfile(path):
        raise InputError(f"Checkpoint {path!r} is not a file.")


_REFUSED_HINT = (
    " ssdet reads checkpoints with weights_only=True; re-save a file you trust as plain weights, "
    "e.g. torch.save({'model': state_dict}, 'weights.pth')."
)


def _torch_checkpoint(path: str) -> dict[str, Any]:
    loaded = load_torch_file(path, hint=_REFUSED_HINT)
    if not isinstance(loaded, Mapping):
        raise InputError(
            f"Checkpoint {path!r} is not a checkpoint: it holds a {type(loaded).__name__}, not a "
            "dict of weights."
        )
    return dict(loaded)


def _model_zoo_checkpoint(data: Any, path: str) -> dict[str, Any]:
    # Detectron2's reading of its .pkl formats (DetectionCheckpointer._load_file), applied to the
    # restricted unpickler's result.
    if not isinstance(data, Mapping):
        raise InputError(
            f"Checkpoint {path!r} is not a checkpoint: the pickle holds a {type(data).__name__}, "
            "not a dict of weights."
        )
    if "model" in data and "__author__" in data:  # Detectron2's model zoo
        logger.info("Reading a file from '%s'", data["__author__"])
        return dict(data)
    # Caffe2 / Detectron1's model zoo: detection models keep their weights under "blobs".
    blobs = data.get("blobs", data)
    if not isinstance(blobs, Mapping):
        raise InputError(f"Checkpoint {path!r}: 'blobs' is a {type(blobs).__name__}, not a dict.")
    return {
        "model": {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")},
        "__author__": "Caffe2",
        "matching_heuristics": True,
    }


def _pycls_checkpoint(data: dict[str, Any], path: str) -> dict[str, Any]:
    # Detectron2's reading of pycls checkpoints (.pyth), applied to a weights_only load.
    state = data.get("model_state")
    if not isinstance(state, Mapping):
        raise InputError(f"Cannot load .pyth file {path!r}: pycls checkpoints hold 'model_state'.")
    return {
        "model": {k: v for k, v in state.items() if not str(k).endswith("num_batches_tracked")},
        "__author__": "pycls",
        "matching_heuristics": True,
    }


def _check_weights(model: Any, path: str) -> None:
    """Refuse a "model" that is no non-empty dict of named tensors or arrays."""
    if not isinstance(model, Mapping) or not model:
        raise InputError(
            f"Checkpoint {path!r} is not a checkpoint: its 'model' is "
            f"{'empty' if isinstance(model, Mapping) else 'a ' + type(model).__name__}, not a "
            "dict of weights."
        )
    for key, value in model.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor | np.ndarray):
            raise InputError(
                f"Checkpoint {path!r} is not a checkpoint of weights: its 'model' maps {key!r} to "
                f"a {type(value).__name__}, not a tensor."
            )


class SsdetCheckpointer(DetectionCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` with safe reading, atomic writing and resume fallback.

    See the module docstring. The arguments are ``DetectionCheckpointer``'s.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", **kwargs: Any):
        super().__init__(model, save_dir, **kwargs)
        # A resume asks for the last checkpoint several times; a fallback is logged once.
        self._reported = ""

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """``DetectionCheckpointer.load``; a missing local file is an :class:`InputError`.

        Raises:
            InputError: a missing, unreadable or refused file (see the module docstring).
        """
        parsed = urlparse(path)
        if path and not parsed.scheme:
            # Detectron2 takes "FILE?matching_heuristics=True"; the file is without the query.
            _check_file(parsed._replace(query="").geturl())
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")):
            return load_checkpoint_file(filename)
        # Detectron2's: a bare state dict goes under "model", URL query flags are read; the file
        # itself is read by _torch_load below.
        checkpoint = super()._load_file(filename)
        _check_weights(checkpoint["model"], filename)
        return checkpoint

    def _torch_load(self, f: str) -> dict[str, Any]:
        return _torch_checkpoint(f)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then tag it as the last checkpoint.

        The same content as ``Checkpointer.save``: the model's and every checkpointable's state
        dict plus ``kwargs``.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        # The temporary file of a save that was killed (atomic_open's name for it); one run per
        # folder (the output-folder lock), so no other save is writing it.
        for stale in glob.glob(os.path.join(glob.escape(self.save_dir), f".{basename}.*.tmp")):
            os.remove(stale)
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_open(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write the ``last_checkpoint`` tag atomically."""
        with atomic_open(os.path.join(self.save_dir, _TAG_FILE)) as f:
            f.write(last_filename_basename)

    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` has a ``last_checkpoint`` tag and a checkpoint that loads."""
        return bool(self.get_checkpoint_file())

    def get_checkpoint_file(self) -> str:
        """The tagged checkpoint; if the tag is empty or names a missing or unloadable file, the
        newest ``model_*.pth`` that loads (logged); "" when there is no tag or no such file."""
        if not super().has_checkpoint():
            return ""
        tagged = super().get_checkpoint_file()
        if tagged and os.path.isfile(tagged) and is_loadable_checkpoint(tagged):
            return tagged
        fallback = next(
            (path for path in self._periodic_checkpoints() if is_loadable_checkpoint(path)), ""
        )
        name = os.path.basename(tagged)  # "" for an empty tag (save_dir + "/")
        if not name:
            problem = "is empty"
        elif not os.path.exists(tagged):
            problem = f"names {name}, which is missing"
        else:
            problem = f"names {name}, which does not load"
        tag = os.path.join(self.save_dir, _TAG_FILE)
        if fallback:
            message = (
                f"{tag} {problem}: resuming from {os.path.basename(fallback)} instead, the newest "
                "checkpoint there that loads."
            )
        else:
            message = f"{tag} {problem}, and no model_*.pth there loads: nothing to resume from."
        if message != self._reported:
            logger.warning(message)
            self._reported = message
        return fallback

    def _periodic_checkpoints(self) -> list[str]:
        """``model_<iteration>.pth`` and ``model_final.pth`` in ``save_dir``, newest first."""
        found = []
        for entry in os.scandir(self.save_dir):
            match = _PERIODIC_CHECKPOINT.fullmatch(entry.name)
            if match and entry.is_file():
                iteration = float("inf") if match[1] == "final" else int(match[1])
                found.append((iteration, entry.path))
        return [path for _, path in sorted(found, reverse=True)]


class SsdetCheckpointerMixin:
    """``DefaultTrainer`` mixin: the trainer checkpoints with :class:`SsdetCheckpointer`.

    Put it before ``DefaultTrainer`` in the bases. A resumed run that has nothing left to train
    also gets its ``model_final.pth`` back when that file does not load (see
    :meth:`restore_final_checkpoint`).
    """

    def build_hooks(self) -> list:
        # DefaultTrainer.__init__ makes its DetectionCheckpointer just before it builds the hooks,
        # and the PeriodicCheckpointer hook keeps the one it is given: replacing it here is what
        # makes every save and load of the trainer go through SsdetCheckpointer.
        built = self.checkpointer
        self.checkpointer = SsdetCheckpointer(
            built.model, built.save_dir, save_to_disk=built.save_to_disk, **built.checkpointables
        )
        return super().build_hooks()

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        self.restore_final_checkpoint()

    def restore_final_checkpoint(self) -> None:
        """After a resume at or past ``max_iter``, rewrite ``model_final.pth`` if it does not load.

        Such a run trains no step, so Detectron2 would not save ``model_final.pth`` again: a
        final checkpoint truncated by a kill (the tag then names the periodic checkpoint of the
        same, last iteration) would stay truncated. The state resumed from is that of the last
        iteration, which is what ``model_final.pth`` holds.
        """
        if self.start_iter < self.max_iter or not comm.is_main_process():
            return
        path = os.path.join(self.checkpointer.save_dir, FINAL_CHECKPOINT)
        if is_loadable_checkpoint(path):
            return
        logger.warning(
            "%s is %s: writing it again from the checkpoint of iteration %d.",
            path,
            "missing" if not os.path.exists(path) else "unloadable",
            self.start_iter - 1,
        )
        self.checkpointer.save(FINAL_CHECKPOINT[: -len(".pth")], iteration=self.start_iter - 1)
