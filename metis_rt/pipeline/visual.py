"""Metis-L2S visual conditions: reading feature files and turning 25 fps features into the stage-1 condition.

The official visual encoder was never released; Metis-L2S consumes its output, ``D``-wide features (768 for the
released model) at 25 frames per second. ``video2semantic`` upsamples them linearly to the 50 Hz semantic-token
rate (``F.interpolate(scale_factor=2, mode="linear", align_corners=False)``) and puts ``Tp`` zero rows in front
for the voice prompt, so the stage-1 target is ``2 * T_video`` frames long.

Feature files: ``.npy`` (a [T, D] array, 25 fps unless told otherwise) or ``.npz`` with ``features`` [T, D] and
optionally ``fps``. Anything else - another width, another rate, NaNs, a 1-D or 3-D array, an overlong clip - is
refused with a message saying what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metis_rt.errors import MetisError

VISUAL_FPS = 25.0  # Metis-L2S's feature rate
UPSAMPLE = 2  # 25 fps -> the 50 Hz semantic-token rate
MIN_VISUAL_FRAMES = 2
MAX_VISUAL_S = 60.0  # stage-1 attention grows with the square of the length; split longer videos


class VisualFeatureError(MetisError):
    """A visual feature array or file is unusable for Metis-L2S."""


def upsample_visual(features: torch.Tensor) -> torch.Tensor:
    """[T, D] at 25 fps -> [2T, D] at 50 Hz (linear, half-pixel centres, edges clamped)."""
    x = features.transpose(0, 1)[None]  # [1, D, T]
    return F.interpolate(x, scale_factor=UPSAMPLE, mode="linear", align_corners=False)[0].transpose(0, 1)


def l2s_condition(features: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[T, D] visual features -> the stage-1 condition [1, prompt_len + 2T, D] (zero rows for the prompt)."""
    up = upsample_visual(features)
    return torch.cat([up.new_zeros(prompt_len, up.shape[1]), up])[None]


def check_features(features: np.ndarray, width: int, fps: float = VISUAL_FPS, where: str = "visual features") -> None:
    """Raise :class:`VisualFeatureError` unless ``features`` is a finite [T, width] array at 25 fps."""
    if fps != VISUAL_FPS:
        raise VisualFeatureError(
            f"{where}: Metis-L2S takes features at {VISUAL_FPS:g} fps, got {fps:g} fps; resample the visual "
            f"front-end's output to {VISUAL_FPS:g} fps (one feature row per 40 ms of video)"
        )
    if features.ndim != 2:
        raise VisualFeatureError(f"{where}: expected a [frames, {width}] array, got shape {list(features.shape)}")
    if features.shape[1] != width:
        raise VisualFeatureError(
            f"{where}: expected {width} values per frame (this model's visual width), got {features.shape[1]} "
            f"(shape {list(features.shape)}); see docs/l2s.md for a compatible front-end"
        )
    frames = features.shape[0]
    if frames < MIN_VISUAL_FRAMES:
        raise VisualFeatureError(f"{where}: {frames} frame(s); need at least {MIN_VISUAL_FRAMES} (80 ms of video)")
    if frames / VISUAL_FPS > MAX_VISUAL_S:
        raise VisualFeatureError(
            f"{where}: {frames / VISUAL_FPS:.1f} s of video; at most {MAX_VISUAL_S:g} s per call - split the video"
        )
    if not np.issubdtype(features.dtype, np.floating) or not np.all(np.isfinite(features)):
        raise VisualFeatureError(f"{where}: features must be finite floating-point numbers (found NaN/inf or ints)")


def load_features(path: str | Path, width: int, fps: float | None = None) -> np.ndarray:
    """Read and check a feature file (``.npy`` [T, D], or ``.npz`` with ``features`` and optional ``fps``).

    ``fps`` (e.g. from ``--visual-fps``) states the file's rate; an ``.npz`` may state it itself (they must agree).
    """
    path = Path(path)
    if not path.is_file():
        raise VisualFeatureError(f"visual feature file {str(path)!r} does not exist")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "features" not in data:
                    raise VisualFeatureError(f"{path}: an .npz needs a 'features' array; it has {sorted(data.files)}")
                features = np.asarray(data["features"])
                file_fps = float(data["fps"]) if "fps" in data else None
        elif path.suffix.lower() == ".npy":
            features, file_fps = np.load(path, allow_pickle=False), None
        else:
            raise VisualFeatureError(f"{path}: use a .npy ([frames, {width}]) or .npz (features, fps) file")
    except VisualFeatureError:
        raise
    except (OSError, ValueError) as exc:
        raise VisualFeatureError(f"{path}: not a readable numpy file ({exc})") from exc
    if fps is not None and file_fps is not None and fps != file_fps:
        raise VisualFeatureError(f"{path}: the file says {file_fps:g} fps but {fps:g} fps was given")
    rate = file_fps if file_fps is not None else (fps if fps is not None else VISUAL_FPS)
    check_features(features, width, rate, str(path))
    return features.astype(np.float32, copy=False)
