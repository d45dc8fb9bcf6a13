"""Fine-tuning with TensorFlow/Keras: the only module of dflare-edge that imports TensorFlow.

TensorFlow comes with the optional ``repair`` extra (``pip install dflare-edge[repair]``); it is imported
inside :func:`require_tensorflow`, so the rest of the package, and ``dflare repair --export-only``,
work without it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from host.errors import ModelError, RepairError

#: Images per fine-tuning step: the fixtures' training batch size.
BATCH_SIZE = 32
#: Images per Keras prediction call (memory stays small: 256 x 32x32x3 floats is 3 MiB).
PREDICT_BATCH = 256
#: File endings Keras' ``load_model`` reads (a SavedModel is a directory holding saved_model.pb).
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

INSTALL_HINT = "pip install dflare-edge[repair]"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep TensorFlow's and the converter's chatter (Python prints and native log lines) off stdout/stderr.

    stdout must stay clean for ``--json``. What was said is written to stderr if the block fails.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    text = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as native:
        try:
            for fd in saved:
                os.dup2(native.fileno(), fd)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        except BaseException:
            _restore(saved)
            native.seek(0)
            sys.stderr.write(text.getvalue() + native.read().decode(errors="replace"))
            raise
        finally:
            _restore(saved)


def _restore(saved: dict[int, int]) -> None:
    for fd, copy in list(saved.items()):
        os.dup2(copy, fd)
        os.close(copy)
        del saved[fd]


def require_tensorflow() -> Any:
    """Import TensorFlow, or fail with the one command that installs it.

    Raises:
        RepairError: TensorFlow is not installed (or does not import).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal
    try:
        with quiet():
            import tensorflow as tf
    except ImportError as exc:
        raise RepairError(f"dflare repair fine-tunes with TensorFlow, which is not installed ({exc}): "
                          f"{INSTALL_HINT} (or use --export-only to write the repair set without it)") from None
    return tf


def load_keras_original(path: str | Path, image_shape: tuple[int, int, int], classes: int) -> Any:
    """Load the original float model for fine-tuning: a ``.keras``/``.h5`` file or a SavedModel directory.

    A SavedModel is wrapped in a trainable ``keras.layers.TFSMLayer`` (its ``serving_default`` signature).

    Args:
        path: the model file or directory.
        image_shape: the (H, W, C) the campaign's models take.
        classes: the campaign's number of classes.

    Returns:
        A Keras model taking normalized float (N, H, W, C) images and returning (N, classes) probabilities.

    Raises:
        ModelError: the path is missing, cannot be loaded, or does not fit the campaign's models.
    """
    require_tensorflow()
    import keras

    path = Path(path)
    hint = "give a model saved with model.save('M.keras') (or .h5), or a SavedModel directory"
    if not path.exists():
        raise ModelError(f"original Keras model not found: {path}; {hint}")
    try:
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise ValueError("the directory holds no saved_model.pb")
            layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default", trainable=True)
            inputs = keras.Input(shape=image_shape)
            outputs = layer(inputs)
            if isinstance(outputs, dict):
                if len(outputs) != 1:
                    raise ValueError(f"its serving signature has {len(outputs)} outputs, expected 1")
                outputs = next(iter(outputs.values()))
            model = keras.Model(inputs, outputs)
        elif path.suffix.lower() in KERAS_SUFFIXES:
            model = keras.models.load_model(path, compile=False)
        else:
            raise ValueError(f"unknown model format {path.suffix!r}")
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for unreadable files; report any
        raise ModelError(f"cannot load the original Keras model {path}: {type(exc).__name__}: {exc}; {hint}") from None
    in_shape = tuple(int(d) if d is not None else -1 for d in model.input_shape[1:])
    out_shape = tuple(int(d) if d is not None else -1 for d in model.output_shape[1:])
    if in_shape != tuple(image_shape) or out_shape != (classes,):
        raise ModelError(f"{path} takes {in_shape} and gives {out_shape}, but the campaign's models take "
                         f"{tuple(image_shape)} and give ({classes},): it is not their original")
    return model


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities for normalized float images."""
    return np.asarray(model.predict(x, batch_size=PREDICT_BATCH, verbose=0), np.float32)


def outputs_probabilities(probs: np.ndarray) -> bool:
    """Whether model outputs look like probabilities (rows in [0, 1] summing to 1) rather than logits."""
    return bool(np.all(probs >= 0) and np.all(probs <= 1) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3))


def fine_tune(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float, seed: int,
              from_logits: bool = False, batch_size: int = BATCH_SIZE) -> list[float]:
    """Fine-tune ``model`` in place on normalized images ``x`` with integer labels ``y``.

    Adam at ``learning_rate``, sparse categorical cross-entropy (on probabilities, or on logits when
    ``from_logits``), the data shuffled every epoch; ``keras.utils.set_random_seed(seed)`` makes a run
    repeatable on one machine.

    Returns:
        The mean training loss of each epoch.
    """
    import keras

    keras.utils.set_random_seed(seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return [float(v) for v in history.history.get("loss", [])]
