"""Configuration: frozen dataclasses, one YAML/JSON loader that rejects unknown keys, `key=value` overrides.

Two sources describe a model directory:
* our own model configs (`configs/metis.yaml` carries the official Metis/MaskGCT numbers), and
* an optional Amphion-format `config.json` inside the model directory (the format of the official repos'
  configs and of the parity vectors), translated by :func:`from_amphion`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from metis_rt.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
OFFICIAL_MODEL_CONFIG = CONFIG_DIR / "metis.yaml"

TASKS = ("se", "tse", "vc")  # streaming tasks: audio in, audio out
GENERATIVE_TASKS = ("tts", "l2s")  # whole-request tasks: text / visual features + a voice prompt -> speech
ALL_TASKS = TASKS + GENERATIVE_TASKS
STAGE1_FAMILIES = ("task", "omni")  # each task's own stage-1 checkpoint, or the one Metis-Omni checkpoint
OMNI_TASKS = ("se", "tse", "vc", "tts")  # what Metis-Omni serves (not L2S)
ADAPTER_KINDS = ("none", "gated", "mlp")


def stage1_variant(task: str, family: str = "task") -> str:
    """The stage-1 model that runs ``task``: its own (``"task"``) or Metis-Omni (``"omni"``)."""
    if task not in ALL_TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(ALL_TASKS)}")
    if family == "task":
        return task
    if family == "omni":
        if task not in OMNI_TASKS:
            raise ConfigError(f"Metis-Omni does not do {task!r}; it serves {', '.join(OMNI_TASKS)}")
        return "omni"
    raise ConfigError(f"unknown stage-1 family {family!r}; expected one of {', '.join(STAGE1_FAMILIES)}")


# ----------------------------------------------------------------------------- model architecture
@dataclass(frozen=True)
class Stage1Config:
    """Metis stage 1 (masked generative SSL-token model, `MetisStage1` / `MaskGCT_T2S`)."""

    hidden_size: int = 1536
    num_layers: int = 16
    num_heads: int = 16
    cond_codebook_size: int = 8192  # semantic-token vocabulary
    cond_dim: int = 1024  # width of the continuous SSL condition (w2v-BERT features)
    visual_dim: int = 768  # width of the L2S visual condition (Metis-L2S only)
    use_phone_cond: bool = False
    phone_vocab_size: int = 1024
    adapter: str = "gated"  # "none" (base / TTS), "gated" (SimpleAdapter), "mlp" (L2S Sequential)


@dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: float

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass(frozen=True)
class S2AConfig:
    """MaskGCT semantic-to-acoustic model (`MaskGCT_S2A`)."""

    num_quantizer: int = 12
    hidden_size: int = 1024
    num_layers: int = 16
    num_heads: int = 16
    codebook_size: int = 1024
    cond_codebook_size: int = 8192


@dataclass(frozen=True)
class SemanticCodecConfig:
    """RepCodec (w2v-BERT features -> semantic token ids)."""

    codebook_size: int = 8192
    hidden_size: int = 1024
    codebook_dim: int = 8
    vocos_dim: int = 384
    vocos_intermediate_dim: int = 2048
    vocos_num_layers: int = 12


@dataclass(frozen=True)
class CodecEncoderConfig:
    d_model: int = 96
    up_ratios: tuple[int, ...] = (3, 4, 5, 8)
    out_channels: int = 256
    use_tanh: bool = False


@dataclass(frozen=True)
class CodecDecoderConfig:
    in_channels: int = 256  # the official code reads a key that is absent and falls back to 256
    num_quantizers: int = 12
    codebook_size: int = 1024
    codebook_dim: int = 8
    vocos_dim: int = 512
    vocos_intermediate_dim: int = 4096
    vocos_num_layers: int = 30
    n_fft: int = 1920
    hop_size: int = 480


@dataclass(frozen=True)
class SslConfig:
    """w2v-BERT 2.0 feature settings (the network itself is described by `w2v-bert-2.0/config.json`)."""

    hidden_state_index: int = 17


@dataclass(frozen=True)
class ModelConfig:
    stage1: Stage1Config = field(default_factory=Stage1Config)
    lora: Mapping[str, LoraConfig] = field(
        default_factory=lambda: {
            "se": LoraConfig(32, 64),
            "tse": LoraConfig(32, 64),
            "vc": LoraConfig(16, 32),
        }
    )
    s2a_1layer: S2AConfig = field(default_factory=lambda: S2AConfig(num_quantizer=1))
    s2a_full: S2AConfig = field(default_factory=S2AConfig)
    semantic_codec: SemanticCodecConfig = field(default_factory=SemanticCodecConfig)
    codec_encoder: CodecEncoderConfig = field(default_factory=CodecEncoderConfig)
    codec_decoder: CodecDecoderConfig = field(default_factory=CodecDecoderConfig)
    ssl: SslConfig = field(default_factory=SslConfig)

    def lora_for(self, task: str) -> LoraConfig:
        if task not in self.lora:
            raise ConfigError(
                f"model config has no LoRA settings for task {task!r}; expected lora.{task}: {{r, alpha}}"
            )
        return self.lora[task]


# ----------------------------------------------------------------------------- decoding settings
@dataclass(frozen=True)
class Stage1Decoding:
    steps: int = 10
    cfg: float = 0.0
    rescale_cfg: float = 0.75
    temperature: float = 0.9
    filter_thres: float = 0.98


@dataclass(frozen=True)
class S2ADecoding:
    steps_1layer: tuple[int, ...] = (40,)
    cfg_1layer: float = 0.0
    steps_full: tuple[int, ...] = (40, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    cfg_full: float = 2.5
    rescale_cfg: float = 0.75
    temperature: float = 1.5
    filter_thres: float = 0.98


@dataclass(frozen=True)
class TaskDecoding:
    stage1: Stage1Decoding = field(default_factory=Stage1Decoding)
    s2a: S2ADecoding = field(default_factory=S2ADecoding)


@dataclass(frozen=True)
class OfficialConfig:
    """What `configs/metis.yaml` holds: the architecture and the official per-task decoding settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    decoding: Mapping[str, TaskDecoding] = field(default_factory=dict)


# ----------------------------------------------------------------------------- generic loader
T = TypeVar("T")


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from plain data; unknown keys and wrong types raise ConfigError."""
    return _convert(cls, data, where)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
        kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin in (Mapping, dict, typing.Mapping):
        _, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must contain a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, mapping by mapping (anything else in ``update`` replaces); inputs untouched.

    The result may share unchanged sub-mappings with the inputs (YAML anchors too): copy before mutating it."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to nested plain data, returning a copy."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r}; known: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_official_config(path: str | Path = OFFICIAL_MODEL_CONFIG, overrides: Sequence[str] = ()) -> OfficialConfig:
    data = apply_overrides(read_mapping(path), overrides)
    return from_dict(OfficialConfig, data, where=str(path))


# ----------------------------------------------------------------------------- Amphion config.json
def from_amphion(data: Mapping[str, Any], base: ModelConfig, task: str | None = None) -> ModelConfig:
    """Translate an Amphion-format config (`model.t2s_model`, `model.s2a_model`, ...) onto `base`.

    Keys the Amphion format carries but inference does not use (training probabilities, codec training
    options) are accepted and ignored; every size inference needs is read when present.
    """
    model = data.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError("Amphion config.json: expected a top-level 'model' section")
    try:
        return _from_amphion_model(model, base, task)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"Amphion config.json: malformed model section ({exc!r})") from exc


def _pick(section: Mapping[str, Any], names: Sequence[str], cls: type[T], default: T) -> T:
    kwargs = {n: section[n] for n in names if n in section}
    for k, v in list(kwargs.items()):
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    return from_dict(cls, {**dataclasses.asdict(default), **kwargs})  # type: ignore[arg-type]


def _from_amphion_model(model: Mapping[str, Any], base: ModelConfig, task: str | None) -> ModelConfig:
    cfg = base
    t2s = model.get("t2s_model")
    if t2s is not None:
        stage1 = _pick(
            t2s,
            ["hidden_size", "num_layers", "num_heads", "cond_codebook_size", "cond_dim", "use_phone_cond"],
            Stage1Config,
            base.stage1,
        )
        if task == "l2s":  # an L2S config's cond_dim is the visual feature width
            stage1 = dataclasses.replace(stage1, cond_dim=base.stage1.cond_dim, visual_dim=int(t2s["cond_dim"]))
        lora = dict(base.lora)
        if t2s.get("use_lora") and task is not None:
            lora[task] = LoraConfig(int(t2s["lora_r"]), float(t2s["lora_alpha"]))
        cfg = dataclasses.replace(cfg, stage1=stage1, lora=lora)
    s2a = model.get("s2a_model")
    if s2a is not None:
        names = [
            "num_quantizer",
            "hidden_size",
            "num_layers",
            "num_heads",
            "codebook_size",
            "cond_codebook_size",
        ]
        if "s2a_1layer" in s2a:
            cfg = dataclasses.replace(cfg, s2a_1layer=_pick(s2a["s2a_1layer"], names, S2AConfig, base.s2a_1layer))
        if "s2a_full" in s2a:
            cfg = dataclasses.replace(cfg, s2a_full=_pick(s2a["s2a_full"], names, S2AConfig, base.s2a_full))
    sc = model.get("semantic_codec")
    if sc is not None:
        names = [f.name for f in dataclasses.fields(SemanticCodecConfig)]
        cfg = dataclasses.replace(cfg, semantic_codec=_pick(sc, names, SemanticCodecConfig, base.semantic_codec))
    ac = model.get("acoustic_codec")
    if ac is not None:
        if "encoder" in ac:
            names = ["d_model", "up_ratios", "out_channels", "use_tanh"]
            cfg = dataclasses.replace(
                cfg, codec_encoder=_pick(ac["encoder"], names, CodecEncoderConfig, base.codec_encoder)
            )
        if "decoder" in ac:
            dec = ac["decoder"]
            if not dec.get("use_vocos", True):
                raise ConfigError("Amphion config.json: acoustic_codec.decoder.use_vocos=false is not supported")
            if dec.get("quantizer_type", "fvq") != "fvq":
                raise ConfigError(f"Amphion config.json: quantizer_type {dec.get('quantizer_type')!r} is not supported")
            names = [
                "num_quantizers",
                "codebook_size",
                "codebook_dim",
                "vocos_dim",
                "vocos_intermediate_dim",
                "vocos_num_layers",
                "n_fft",
                "hop_size",
            ]
            # The official CodecDecoder reads `in_channels`, which the configs spell `in_channel`: it always
            # falls back to 256. We honour a real `in_channels` key and ignore `in_channel`, as it does.
            picked = {n: dec[n] for n in names if n in dec}
            if "in_channels" in dec:
                picked["in_channels"] = dec["in_channels"]
            cfg = dataclasses.replace(
                cfg,
                codec_decoder=from_dict(CodecDecoderConfig, {**dataclasses.asdict(base.codec_decoder), **picked}),
            )
    ssl = model.get("ssl")  # ours, not Amphion's (which hard-codes layer 17): models trained here may use another
    if ssl is not None:
        cfg = dataclasses.replace(cfg, ssl=_pick(ssl, ["hidden_state_index"], SslConfig, base.ssl))
    return cfg
