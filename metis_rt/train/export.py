"""Export a fine-tuned LoRA + condition adapter as an official-layout model directory the normal loader serves.

``out_dir`` receives
* ``metis_<task>/metis_<task>_lora_<r>.safetensors``: the LoRA pairs, named as the official peft dumps
  (``model.diff_estimator.layers.<i>.<proj>.lora_{A,B}.default.weight``, fp32);
* ``metis_<task>/metis_<task>_lora_<r>_adapter.safetensors``: the 5 ``model.cond_adapter.*`` tensors;
* symbolic links to what serving the task needs from the base model directory (``metis_base``, w2v-BERT and its
  statistics, the semantic and acoustic codecs, the S2A models), each entry that exists there;
* ``config.json`` (Amphion format) when the LoRA rank/alpha differ from what the base directory implies (or the
  base has its own ``config.json``, copied with the LoRA fields set), so ``resolve_config(out_dir, task)`` finds
  ``r``/``alpha``. It names one LoRA setting, so the directory serves the exported task (and any other whose files
  share that rank);
* ``export.json``: what was exported from where.

Both files are checked against ``expected_file_layouts`` before writing: what the strict loader will demand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from metis_rt.config import LoraConfig, ModelConfig
from metis_rt.errors import CheckpointError
from metis_rt.model_settings import MODEL_SETTINGS
from metis_rt.models.checkpoints import check_layout
from metis_rt.models.lora import LORA_FILE_PREFIX, lora_parameters
from metis_rt.models.ssl import STATS_FILE, W2V_DIR
from metis_rt.models.stage1 import Stage1Model
from metis_rt.models.stage1_loading import ADAPTER_PREFIX, expected_file_layouts, stage1_files
from metis_rt.pipeline.components import (
    AMPHION_CONFIG,
    CODEC_DECODER_FILE,
    CODEC_ENCODER_FILE,
    S2A_FILES,
    SEMANTIC_CODEC_FILE,
    resolve_config,
)

log = logging.getLogger(__name__)

EXPORT_INFO = "export.json"
SAFETENSORS_METADATA = {"format": "pt"}


def _top(path: str) -> str:
    return path.split("/", 1)[0]


def serving_entries(task: str, cfg: ModelConfig) -> list[str]:
    """Top-level entries of a model directory that serving ``task`` needs besides its own LoRA/adapter files."""
    files = [stage1_files(task, cfg).main, W2V_DIR, STATS_FILE, SEMANTIC_CODEC_FILE, CODEC_ENCODER_FILE]
    files += [CODEC_DECODER_FILE, *S2A_FILES.values()]
    return sorted({_top(f) for f in files})


def task_file_tensors(model: Stage1Model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(adapter file tensors, LoRA file tensors) under their official names, fp32 on CPU."""
    if not model.has_adapter:
        raise ValueError("the model has no condition adapter to export")

    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device="cpu", dtype=torch.float32).contiguous()

    adapter = {f"{LORA_FILE_PREFIX}{ADAPTER_PREFIX}{k}": plain(v) for k, v in model.cond_adapter.state_dict().items()}
    lora = {k: plain(v) for k, v in lora_parameters(model).items()}
    return adapter, lora


def model_config_json(base_dir: Path, task: str, lora: LoraConfig) -> dict | None:
    """The ``config.json`` the export needs (None when the base directory already implies ``lora``)."""
    path = base_dir / AMPHION_CONFIG
    if path.is_file():
        data = json.loads(path.read_text())
    else:
        base_cfg, _ = resolve_config(base_dir, task)
        if base_cfg.lora_for(task) == lora:
            return None
        data = {"model": {}}
    t2s = data.setdefault("model", {}).setdefault("t2s_model", {})
    t2s.update(use_lora=True, lora_r=lora.r, lora_alpha=lora.alpha)
    return data


def link_base(base_dir: Path, out_dir: Path, entries: list[str]) -> list[Path]:
    """Symlink each existing ``base_dir/<entry>`` into ``out_dir`` (replacing an old link); returns the links."""
    links = []
    for name in entries:
        source = base_dir.resolve() / name
        if not source.exists():
            log.warning("base model directory %s has no %s: the export cannot serve without it", base_dir, name)
            continue
        link = out_dir / name
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise CheckpointError(f"{link} exists and is not a link; export into an empty directory")
        link.symlink_to(source, target_is_directory=source.is_dir())
        links.append(link)
    return links


def export_task_model(
    model: Stage1Model,
    task: str,
    lora: LoraConfig,
    base_dir: str | Path,
    out_dir: str | Path,
    cfg: ModelConfig,
    info: dict | None = None,
) -> list[Path]:
    """Write ``model``'s LoRA and adapter (unmerged) as ``task``'s official files; returns every path written."""
    base, out = Path(base_dir), Path(out_dir)
    cfg = dataclasses.replace(cfg, lora={**cfg.lora, task: lora})
    files = stage1_files(task, cfg)
    layouts = expected_file_layouts(task, cfg)
    adapter, lora_tensors = task_file_tensors(model)
    written = []
    for name, tensors in ((files.adapter, adapter), (files.lora, lora_tensors)):
        check_layout(layouts[name], {k: tuple(v.shape) for k, v in tensors.items()}, out / name)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / name), metadata=SAFETENSORS_METADATA)
        written.append(out / name)
    config = model_config_json(base, task, lora)
    if config is not None:
        (out / AMPHION_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        written.append(out / AMPHION_CONFIG)
    elif (out / AMPHION_CONFIG).is_file():  # left by an earlier export with other LoRA settings
        (out / AMPHION_CONFIG).unlink()
    written += link_base(base, out, serving_entries(task, cfg))
    if (base / MODEL_SETTINGS).is_file():  # the base model's own decoding/streaming settings serve its tasks too
        written += link_base(base, out, [MODEL_SETTINGS])
    details = {"task": task, "lora_r": lora.r, "lora_alpha": lora.alpha, "base_model_dir": str(base.resolve())}
    (out / EXPORT_INFO).write_text(json.dumps({**details, **(info or {})}, indent=2) + "\n")
    written.append(out / EXPORT_INFO)
    if resolve_config(out, task)[0].lora_for(task) != lora:
        raise CheckpointError(f"{out}: the exported config does not give {task} LoRA r={lora.r}, alpha={lora.alpha}")
    return written
