"""``trainer: finetune``: LoRA + gated condition adapter on a frozen Metis stage-1 base, for SE / TSE / VC.

As the Metis paper adapts its pre-trained base: the base weights stay frozen; a ``SimpleAdapter``-shaped
:class:`GatedAdapter` (official init: weights N(0, 0.02), zero biases, ``gate_scale`` 0 — so at first only the gate
receives a gradient, and the adapter output grows from zero as the gate opens) maps the normalised w2v-BERT
features of the degraded input to the hidden size, and LoRA pairs (peft init: A Kaiming-uniform, B zero; scaling
alpha / r) wrap every ``q/k/v/o_proj`` and ``gate/up/down_proj`` of the denoiser: exactly the tensors the official
``metis_<task>_lora_<r>(_adapter).safetensors`` files hold. The objective is ``objective.masked_token_loss`` on rows
cut by ``windows.py`` (whole utterances, or the streaming engine's windows with ``window_mode: streaming``).

``init: official`` starts from the released task files instead (e.g. to adapt the official SE model to streaming).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metis_rt.config import LoraConfig, ModelConfig
from metis_rt.errors import ConfigError
from metis_rt.models.checkpoints import assert_materialised, load_checkpoint
from metis_rt.models.lora import LORA_FILE_PREFIX, LoraLinear, inject_lora, is_lora_key
from metis_rt.models.semantic_codec import SemanticCodec
from metis_rt.models.ssl import ExtractorOutput, SslFeatures
from metis_rt.models.stage1 import GatedAdapter, Stage1Model
from metis_rt.models.stage1_loading import ADAPTER_PREFIX, build_stage1, stage1_files
from metis_rt.pipeline.components import SEMANTIC_CODEC_FILE, parse_dtype
from metis_rt.streaming.geometry import Geometry
from metis_rt.train.config import FinetuneOptions, TrainConfig, parse_options
from metis_rt.train.example import Example
from metis_rt.train.export import export_task_model
from metis_rt.train.objective import MaskedBatch, Segment, collate, masked_token_loss
from metis_rt.train.pretrain.config_json import pretrained_model_config
from metis_rt.train.windows import RowPlan, SegmentPolicy, build_rows, plan_utterance, plan_window

ADAPTER_INIT_STD = 0.02  # official SimpleAdapter: in/out weights N(0, 0.02), biases 0
FEATURE_BATCH = 16  # recordings per batched w2v-BERT pass


class FrozenFeaturizer:
    """w2v-BERT features and semantic tokens (no gradients) as :class:`windows.Featurizer`.

    Audio of equal length shares one batched pass (up to ``FEATURE_BATCH`` rows), as the streaming engine batches
    its windows; each row keeps its own extractor normalisation, so a batched row equals a single pass.
    """

    def __init__(self, ssl: SslFeatures, codec: SemanticCodec):
        self.ssl, self.codec = ssl, codec

    @torch.no_grad()
    def features_many(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(wavs)
        for idx in _equal_groups([len(w) for w in wavs]):
            extracted = [self.ssl.extract(wavs[i]) for i in idx]
            stacked = ExtractorOutput(
                torch.cat([e.input_features for e in extracted]), torch.cat([e.attention_mask for e in extracted])
            )
            features = self.ssl.normalise(self.ssl.hidden(stacked)).float()
            for row, i in enumerate(idx):
                out[i] = features[row]
        return out

    @torch.no_grad()
    def quantize_many(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(features)
        for idx in _equal_groups([len(f) for f in features]):
            ids = self.codec(torch.stack([features[i] for i in idx]).to(self.ssl.mean.dtype))
            for row, i in enumerate(idx):
                out[i] = ids[row]
        return out

    def features(self, wav_16k: np.ndarray) -> torch.Tensor:
        """[T, D] of one recording."""
        return self.features_many([wav_16k])[0]

    def tokens(self, wav_16k: np.ndarray) -> torch.Tensor:
        """[T] semantic tokens of one recording (as ``MetisPipeline.semantic_tokens``)."""
        return self.quantize_many([self.features(wav_16k)])[0]


def _equal_groups(lengths: Sequence[int], size: int = FEATURE_BATCH) -> list[list[int]]:
    """Indices grouped by equal length (first-seen order), at most ``size`` per group."""
    groups: dict[int, list[list[int]]] = {}
    for i, n in enumerate(lengths):
        chunks = groups.setdefault(n, [[]])
        if len(chunks[-1]) == size:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


class AdapterWeights(nn.Module):
    """The trainable parts of a LoRA + adapter model, shared (not copied): what a fine-tuning checkpoint holds."""

    def __init__(self, model: Stage1Model):
        super().__init__()
        self.cond_adapter = model.cond_adapter
        wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]
        self.lora = nn.ModuleDict(
            {n.replace(".", "__"): nn.ModuleDict({"A": m.lora_A, "B": m.lora_B}) for n, m in wrapped}
        )


def fresh_adapter(cfg: ModelConfig, gate_init: float, device: torch.device) -> GatedAdapter:
    adapter = GatedAdapter(cfg.stage1.cond_dim, cfg.stage1.hidden_size).to(device)
    with torch.no_grad():
        for linear in (adapter.in_linear, adapter.out_linear):
            linear.weight.normal_(0.0, ADAPTER_INIT_STD)
            linear.bias.zero_()
        adapter.gate_scale.fill_(gate_init)
    return adapter


def trainable_stage1(
    model_dir: Path, task: str, cfg: ModelConfig, init: str, gate_init: float, device: torch.device
) -> Stage1Model:
    """The frozen base (fp32) with an unmerged LoRA and adapter: fresh, or the released task files."""
    files = stage1_files(task, cfg)
    lora = cfg.lora_for(task)
    model = build_stage1(task, cfg)
    opts = {"dtype": torch.float32, "device": device}
    load_checkpoint(model, model_dir / files.main, only=lambda k: not k.startswith(ADAPTER_PREFIX), **opts)
    if init == "official":
        only_adapter = lambda k: k.startswith(ADAPTER_PREFIX)  # noqa: E731
        load_checkpoint(model, model_dir / files.adapter, prefix=LORA_FILE_PREFIX, only=only_adapter, **opts)
    else:
        model.cond_adapter = fresh_adapter(cfg, gate_init, device)
    with torch.device(device):
        inject_lora(model, lora.r, lora.alpha)
    if init == "official":
        load_checkpoint(model, model_dir / files.lora, prefix=LORA_FILE_PREFIX, only=is_lora_key, **opts)
    assert_materialised(model, f"stage-1 {task} model from {model_dir}")
    model.requires_grad_(False)
    for name, param in model.named_parameters():
        param.requires_grad_(is_lora_key(name) or name.startswith(ADAPTER_PREFIX))
    return model


def _model_dir(opts: FinetuneOptions) -> Path:
    if opts.model_dir:
        return Path(opts.model_dir).expanduser()
    from metis_rt.models.hub import default_model_dir

    return default_model_dir()


class AdapterFinetune:
    """A :class:`~metis_rt.train.task.TrainTask` fine-tuning one stage-1 task variant."""

    def __init__(self, opts: FinetuneOptions, device: torch.device | str = "cpu"):
        self.opts, self.device = opts, torch.device(device)
        self.name = f"finetune-{opts.task}" + ("-streaming" if opts.window_mode == "streaming" else "")
        self.model_dir = _model_dir(opts)
        cfg = pretrained_model_config(self.model_dir, opts.task)  # resolve_config + a pre-trained SSL depth
        if opts.init == "official":
            released = cfg.lora_for(opts.task)
            if (released.r, released.alpha) != (opts.lora_r, opts.lora_alpha):
                raise ConfigError(
                    f"init: official continues the released {opts.task} files (r={released.r}, "
                    f"alpha={released.alpha}); set lora_r/lora_alpha to those or use init: fresh"
                )
        self.lora = LoraConfig(opts.lora_r, opts.lora_alpha)
        self.cfg = dataclasses.replace(cfg, lora={**cfg.lora, opts.task: self.lora})
        feat_dtype = parse_dtype(opts.features_dtype)
        ssl = SslFeatures.load(
            self.model_dir, hidden_state_index=cfg.ssl.hidden_state_index, dtype=feat_dtype, device=self.device
        )
        codec = SemanticCodec.load(
            self.model_dir / SEMANTIC_CODEC_FILE, cfg.semantic_codec, dtype=feat_dtype, device=self.device
        )
        self.featurizer = FrozenFeaturizer(ssl, codec)
        self.model = trainable_stage1(self.model_dir, opts.task, self.cfg, opts.init, opts.gate_init, self.device)
        self.weights = AdapterWeights(self.model)
        self.geometry = Geometry.from_config(opts.geometry)
        self.policy = SegmentPolicy(opts.max_frames, opts.max_reference_frames, opts.prompt_drop_prob, opts.prefix_prob)

    # --- TrainTask ------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"adapter_weights": self.weights}

    def trainable(self) -> Iterable[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def plan(self, example: Example) -> RowPlan | None:
        if example.task != self.opts.task:
            raise ValueError(f"a {example.task!r} example reached the {self.opts.task!r} fine-tuning")
        if self.opts.window_mode == "streaming":
            return plan_window(example, self.geometry, self.policy)
        return plan_utterance(example, self.policy)

    def batches(self, examples: Iterator[Example], batch_size: int) -> Iterator[MaskedBatch]:
        """Rows cut from examples (too-short ones skipped), ``batch_size`` per batch; the last may be smaller."""
        plans: list[RowPlan] = []
        for example in examples:
            plan = self.plan(example)
            if plan is not None:
                plans.append(plan)
            if len(plans) == batch_size:
                yield self._batch(plans)
                plans = []
        if plans:
            yield self._batch(plans)

    def _batch(self, plans: list[RowPlan]) -> MaskedBatch:
        rows: list[Segment] = build_rows(plans, self.featurizer)
        return collate(rows, self.opts.min_mask_ratio, self.device)

    def loss(self, batch: MaskedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = masked_token_loss(self.model, batch)
        return loss, {**metrics, "gate": float(self.model.cond_adapter.gate_scale.detach())}

    def export(self, out_dir: Path) -> list[Path]:
        info = {"trainer": "finetune", "window_mode": self.opts.window_mode, "init": self.opts.init}
        if self.opts.window_mode == "streaming":
            info["geometry"] = dataclasses.asdict(self.opts.geometry)
        return export_task_model(self.model, self.opts.task, self.lora, self.model_dir, out_dir, self.cfg, info)


def build(options: Mapping[str, Any], run: TrainConfig) -> AdapterFinetune:
    """The registry's factory: ``options`` is the run file's ``options`` section."""
    opts = parse_options(FinetuneOptions, options)
    if run.data.task != opts.task:
        raise ConfigError(f"data.task is {run.data.task!r} but options.task is {opts.task!r}; set both the same")
    return AdapterFinetune(opts, run.loop.device)
