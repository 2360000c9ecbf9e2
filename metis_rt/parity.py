"""Parity runner: reproduce reference vectors (``cases/manifest.json``) with our public model code.

A vector directory is a model directory (official layout + Amphion ``config.json``) plus cases. Models are loaded
with :func:`load_components` / :class:`MetisPipeline` in float64 with noise-free decoding, exactly as a user loads
them, on the streaming engine's eager code path (:class:`~metis_rt.models.hop_speed.HopSpeed` with ``compile="never"``:
the fast path with its stacked projections; ``VectorDir(root, speed=BASELINE)`` runs the path before issue 20), and
every check of the manifest is run and compared with its tolerance. Components we do not implement yet
are reported as ``unsupported`` (never silently skipped).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from metis_rt.config import S2ADecoding, Stage1Decoding, TaskDecoding
from metis_rt.errors import ConfigError
from metis_rt.models.decoding import ZeroNoise
from metis_rt.models.hop_speed import HopSpeed, apply_hop_speed
from metis_rt.models.ssl import ExtractorOutput
from metis_rt.models.stage1 import Stage1Inputs
from metis_rt.pipeline.components import MetisComponents, load_components, resolve_config
from metis_rt.pipeline.offline import MetisPipeline
from metis_rt.pipeline.tts import TtsSynthesizer
from metis_rt.pipeline.visual import UPSAMPLE, l2s_condition
from metis_rt.text.tokenizer import PhoneTokenizer

log = logging.getLogger(__name__)

PARITY_DTYPE = torch.float64
EAGER = HopSpeed(compile="never")  # the engine's eager hop: fast path, stacked projections, no compile
MANIFEST = "cases/manifest.json"
TASK_VARIANT = {"se": "se", "tse": "tse", "vc": "vc", "omni": "omni", "l2s": "l2s", "tts": "tts"}


class Unsupported(Exception):
    """The check needs a component this version does not implement."""


@dataclass
class CheckResult:
    name: str
    status: str  # "ok" | "FAIL" | "unsupported"
    max_abs_err: float = 0.0
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.status == "unsupported":
            return f"{self.name} unsupported ({'; '.join(self.details)})"
        extra = f"  [{'; '.join(self.details)}]" if self.details else ""
        return f"{self.name} {self.status} max_abs_err={self.max_abs_err:.3e}{extra}"


class VectorDir:
    """One vector directory: manifest, lazily loaded tensors and models."""

    def __init__(self, root: str | Path, speed: HopSpeed = EAGER):
        self.root = Path(root)
        self.speed = speed
        self.manifest = json.loads((self.root / MANIFEST).read_text())
        self.task = self.manifest["task"]
        self.cfg, _ = resolve_config(self.root, self.task)
        self._files: dict[str, dict[str, torch.Tensor]] = {}
        self._comps: MetisComponents | None = None
        self._tokenizer: PhoneTokenizer | None = None

    def tensor(self, ref: dict[str, Any]) -> torch.Tensor:
        if ref["file"] not in self._files:
            self._files[ref["file"]] = load_file(str(self.root / ref["file"]))
        return self._files[ref["file"]][ref["tensor"]]

    @property
    def comps(self) -> MetisComponents:
        if self._comps is None:
            variants = ["base", self.task] if self.task in ("se", "tse", "vc") else [TASK_VARIANT[self.task]]
            self._comps = load_components(self.root, variants, self.cfg, dtype=PARITY_DTYPE)
            apply_hop_speed(self._comps, self.speed)
        return self._comps

    @property
    def tokenizer(self) -> PhoneTokenizer:
        """The phone tokenizer with this directory's ``g2p/vocab.json`` (else our packaged copy)."""
        if self._tokenizer is None:
            self._tokenizer = PhoneTokenizer.load(self.root)
        return self._tokenizer

    @property
    def task_variant(self) -> str:
        return TASK_VARIANT[self.task]


# ----------------------------------------------------------------------------- component runners
def _features(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    out = vd.comps.ssl.extract(inp["wav_16k"].numpy())
    return {"input_features": out.input_features, "attention_mask": out.attention_mask}


def _w2v(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    ssl = vd.comps.ssl
    if params.get("hidden_state_index", vd.cfg.ssl.hidden_state_index) != vd.cfg.ssl.hidden_state_index:
        raise Unsupported(f"hidden_state_index {params['hidden_state_index']}")
    hidden = ssl.hidden(ExtractorOutput(inp["input_features"], inp["attention_mask"]))
    return {"features": ssl.normalise(hidden), "hidden_states17": hidden}


def _semantic_codec(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    ids, quantized = vd.comps.semantic_codec.quantize(inp["features"])
    return {"ids": ids, "quantized": quantized}


def _codec_encoder(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    codec = vd.comps.acoustic_codec
    latent = codec.latent(inp["wav_24k"].to(PARITY_DTYPE)[None])
    return {"ids": codec.quantize_latent(latent), "encoder_latent": latent}


def _codec_decoder(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    dec = vd.comps.acoustic_codec.decoder
    return {"wav": dec.decode(inp["ids"]), "vq_emb": dec.vq2emb(inp["ids"])}


def _stage1_model(vd: VectorDir, name: str):
    return vd.comps.stage1["base" if name.endswith("_base") else vd.task_variant]


def _stage1_forward(vd: VectorDir, inp, params, name: str) -> dict[str, torch.Tensor]:
    model = _stage1_model(vd, name)
    inputs = Stage1Inputs(inp["prompt_ids"], inp.get("cond"), inp.get("phone_ids"))
    prep = model.prepare(inputs, inp["target_ids"].shape[1])
    target = model.target_rows(inp["target_ids"], inp["mask"])
    cond, guided = model.hidden(prep, target, inp["t"], params["cfg"], params["rescale_cfg"])
    out = {"logits_cond": model.to_logit(cond), "embeds_cond": cond}
    if guided is not None:
        out["logits_cfg"] = model.to_logit(guided)
    if prep.adapter_out is not None:
        out["adapter_out"] = prep.adapter_out
    if prep.phone_prefix is not None:
        out["phone_prefix"] = prep.phone_prefix
    return out


def _stage1_decode(vd: VectorDir, inp, params, name: str) -> dict[str, torch.Tensor]:
    model = _stage1_model(vd, name)
    settings = Stage1Decoding(
        params["n_timesteps"], params["cfg"], params["rescale_cfg"], params["temp"], params["filter_thres"]
    )
    inputs = Stage1Inputs(inp["prompt_ids"], inp.get("cond"), inp.get("phone_ids"))
    return {"ids": model.generate(inputs, params["target_len"], settings, ZeroNoise())}


def _s2a_model(vd: VectorDir, params):
    one_layer = params.get("num_quantizer") == 1 or len(params.get("n_timesteps", [0, 0])) == 1
    return vd.comps.s2a_1layer if one_layer else vd.comps.s2a_full


def _s2a_forward(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    model, layer = _s2a_model(vd, params), params["layer"]
    lower = model.lower_rows(inp["target_ids"], layer)
    target = model.target_rows(lower, inp["target_ids"][..., layer], inp["mask"], layer)
    bias = model.condition(inp["semantic_ids"], layer)
    cfg, rescale = params.get("cfg", 0.0), params.get("rescale_cfg", 0.0)
    cond, guided = model.hidden(model.prompt_rows(inp["prompt_ids"]), target, bias, inp["t"], cfg, rescale)
    out = {"logits_cond": model.to_logits[layer](cond), "embeds_cond": cond}
    if guided is not None:
        out["logits_cfg"] = model.to_logits[layer](guided)
    return out


def _s2a_decode(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    model = _s2a_model(vd, params)
    ids = model.generate(
        inp["semantic_ids"],
        inp["prompt_ids"],
        tuple(params["n_timesteps"]),
        cfg=params["cfg"],
        rescale_cfg=params["rescale_cfg"],
        temperature=params["temp"],
        filter_thres=params["filter_thres"],
        noise=ZeroNoise(),
        gt_code=inp.get("gt_code"),
    )
    return {"ids": ids}


def _settings(params) -> TaskDecoding:
    s1, s2f, s21 = params["stage1"], params["s2a_full"], params["s2a_1layer"]
    return TaskDecoding(
        Stage1Decoding(s1["n_timesteps"], s1["cfg"], s1["rescale_cfg"], s1["temp"], s1["filter_thres"]),
        S2ADecoding(
            tuple(s21["n_timesteps"]),
            s21["cfg"],
            tuple(s2f["n_timesteps"]),
            s2f["cfg"],
            s2f["rescale_cfg"],
            s2f["temp"],
            s2f["filter_thres"],
        ),
    )


def _pipeline(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    task = params.get("task", params.get("mode"))
    settings, pipeline = _settings(params), MetisPipeline(vd.comps)
    if task in ("se", "tse", "vc"):
        result = pipeline.run(
            task,
            inp["source_16k"],
            settings,
            ZeroNoise(),
            reference_16k=inp.get("reference_16k"),
            reference_24k=inp.get("reference_24k"),
            variant=vd.task_variant,
        )
    elif task == "tts":
        tts = TtsSynthesizer(pipeline, vd.tokenizer, settings, vd.task_variant)
        voice = tts.voice(inp["prompt_16k"], inp["prompt_24k"], params["prompt_text"], params["prompt_language"])
        result = tts.utterance(voice, params["text"], ZeroNoise(), params["target_language"])
    elif task == "l2s":
        prompt = pipeline.voice_prompt(inp["prompt_16k"], inp["prompt_24k"])
        result = pipeline.l2s(prompt, inp["video_features"], settings, ZeroNoise(), vd.task_variant)
    else:
        raise Unsupported(f"pipeline task {task!r}")
    return {
        "wav": result.wav,
        "semantic_ids": result.semantic_ids,
        "acoustic_ids": result.acoustic_ids,
        **result.intermediates,
    }


def _l2s_features(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    if params.get("scale_factor", UPSAMPLE) != UPSAMPLE or params.get("mode", "linear") != "linear":
        raise Unsupported(f"visual upsampling {params.get('scale_factor')}x {params.get('mode')}")
    return {"cond": l2s_condition(inp["video_features"], params["prompt_len"])}


def _tts_tokenizer(vd: VectorDir, inp, params) -> dict[str, torch.Tensor]:
    tokens = vd.tokenizer.phone_ids(
        params["text"], params["prompt_text"], params["target_language"], params["prompt_language"]
    )
    return {
        "phone_ids": tokens.phone_ids,
        "prompt_phone_ids": tokens.prompt_phone_ids,
        "target_phone_ids": tokens.target_phone_ids,
    }


def _g2p_check(vd: VectorDir, check: dict[str, Any]) -> CheckResult:
    """The g2p check holds a list of cases: the phone string and the ids must both match exactly."""
    result = CheckResult(check["name"], "ok")
    for case in check["cases"]:
        try:
            phones, ids = vd.tokenizer.g2p(case["text"], case["language"])
        except Exception as exc:  # one bad case is that case's failure
            result.status = "FAIL"
            result.details.append(f"{case['text']!r}: {type(exc).__name__}: {exc}")
            continue
        if phones != case["phones"]:
            result.status = "FAIL"
            result.details.append(f"{case['text']!r}: phones {phones!r} != {case['phones']!r}")
        ok, _, note = compare(torch.tensor([ids], dtype=torch.long), vd.tensor(case["ids"]), {"kind": "exact"})
        if not ok:
            result.status = "FAIL"
            result.details.append(f"{case['text']!r}: ids {note}")
    if result.status == "ok":
        result.details.append(f"{len(check['cases'])} cases exact")
    return result


Runner = Callable[..., dict[str, torch.Tensor]]
RUNNERS: dict[str, Runner] = {
    "feature_extractor": _features,
    "w2v_bert_features": _w2v,
    "semantic_codec": _semantic_codec,
    "acoustic_codec_encoder": _codec_encoder,
    "acoustic_codec_decoder": _codec_decoder,
    "s2a_forward": _s2a_forward,
    "s2a_decode": _s2a_decode,
    "pipeline": _pipeline,
    "l2s_features": _l2s_features,
    "tts_tokenizer": _tts_tokenizer,
}
NAMED_RUNNERS: dict[str, Runner] = {"stage1_forward": _stage1_forward, "stage1_decode": _stage1_decode}


# ----------------------------------------------------------------------------- comparison
def compare(actual: torch.Tensor, expected: torch.Tensor, tol: dict[str, Any]) -> tuple[bool, float, str]:
    """(passed, max_abs_err, note) under a manifest tolerance."""
    if tuple(actual.shape) != tuple(expected.shape):
        return False, math.inf, f"shape {list(actual.shape)} != expected {list(expected.shape)}"
    kind = tol["kind"]
    if kind == "exact":
        a, e = actual.cpu(), expected.cpu()
        if a.dtype == torch.bool or e.dtype == torch.bool:
            a, e = a.bool(), e.bool()
        else:
            a, e = a.long(), e.long()
        wrong = int((a != e).sum())
        return wrong == 0, float(wrong > 0), f"{wrong} mismatching ids" if wrong else ""
    err = float((actual.detach().cpu().double() - expected.double()).abs().max()) if actual.numel() else 0.0
    if kind == "scaled_max_abs":
        bound = tol["rel"] * max(1.0, float(expected.abs().max()) if expected.numel() else 1.0)
    elif kind == "max_abs":
        bound = tol["atol"]
    else:
        return False, err, f"unknown tolerance kind {kind!r}"
    return err <= bound, err, "" if err <= bound else f"err {err:.3e} > bound {bound:.3e}"


def run_check(vd: VectorDir, check: dict[str, Any]) -> CheckResult:
    name, component = check["name"], check["component"]
    try:
        if component == "g2p":
            return _g2p_check(vd, check)
        inputs = {k: vd.tensor(ref) for k, ref in check["inputs"].items()}
        with torch.inference_mode():
            if component in NAMED_RUNNERS:
                outputs = NAMED_RUNNERS[component](vd, inputs, check["params"], name)
            elif component in RUNNERS:
                outputs = RUNNERS[component](vd, inputs, check["params"])
            else:
                raise Unsupported(f"unknown component {component!r}")
    except Unsupported as exc:
        return CheckResult(name, "unsupported", details=[str(exc)])
    except Exception as exc:  # a crash in one check is that check's failure, not the runner's
        log.debug("check %s raised", name, exc_info=True)
        return CheckResult(name, "FAIL", math.inf, details=[f"{type(exc).__name__}: {exc}"])
    return _judge(vd, check, outputs)


def _judge(vd: VectorDir, check: dict[str, Any], outputs: dict[str, torch.Tensor]) -> CheckResult:
    result = CheckResult(check["name"], "ok")
    refs = [(k, r, True) for k, r in check["expected"].items()]
    refs += [(k, r, False) for k, r in check.get("intermediates", {}).items()]
    for key, ref, required in refs:
        if key not in outputs:
            if required:
                result.status = "FAIL"
                result.details.append(f"{key}: not produced")
            continue
        tol = ref.get("tolerance", check["expected"][next(iter(check["expected"]))]["tolerance"])
        ok, err, note = compare(outputs[key], vd.tensor(ref), tol)
        if tol["kind"] != "exact":
            result.max_abs_err = max(result.max_abs_err, err)
        if not ok:
            result.status = "FAIL"
            result.details.append(f"{key}: {note}")
    return result


def vector_dirs(paths: list[Path]) -> list[Path]:
    """The vector directories named by ``paths``: each a vector directory or a folder of them (one level down).

    Files (``parity/*`` also matches ``parity/README.md``) are skipped; a folder that is neither is an error.
    """
    found = []
    for path in paths:
        if path.is_file():
            continue
        if (path / MANIFEST).is_file():
            found.append(path)
        elif path.is_dir() and (inner := sorted(d for d in path.iterdir() if (d / MANIFEST).is_file())):
            found.extend(inner)
        else:
            raise ConfigError(f"{path} is not a vector directory (no {MANIFEST}) nor a folder of them")
    if not found:
        raise ConfigError("no vector directory among " + " ".join(str(p) for p in paths))
    return found


def run_directory(root: str | Path, speed: HopSpeed = EAGER) -> list[CheckResult]:
    vd = VectorDir(root, speed)
    return [run_check(vd, check) for check in vd.manifest["checks"]]
