"""The shared training loop and Metis adapter fine-tuning (tiny models, CPU, a few steps each).

Loop: the loss falls, losses.csv / loss_curve.png / export are written, a resumed run equals an uninterrupted one.
Fine-tuning: the loss on a fixed batch falls, only LoRA and adapter tensors change, the export reloads through the
normal loader with the trained logits, streaming rows have the engine's window shapes, the CLI runs end to end.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from metis_rt.config import LoraConfig
from metis_rt.errors import ConfigError, MetisError
from metis_rt.model_settings import MODEL_SETTINGS, load_stream_config_for
from metis_rt.models.lora import is_lora_key
from metis_rt.models.stage1 import Stage1Inputs
from metis_rt.models.stage1_loading import load_stage1
from metis_rt.pipeline.components import load_components, resolve_config
from metis_rt.pipeline.offline import MetisPipeline
from metis_rt.streaming.geometry import Geometry, GeometryConfig
from metis_rt.streaming.processor import MetisWindowProcessor
from metis_rt.train.config import (
    TRAIN_CONFIG_DIR,
    DataConfig,
    FinetuneOptions,
    LoopConfig,
    load_train_config,
    parse_options,
)
from metis_rt.train.corpus import build_train_set
from metis_rt.train.curves import read_csv
from metis_rt.train.example import Example
from metis_rt.train.export import export_task_model
from metis_rt.train.feeds import example_feeds
from metis_rt.train.finetune import AdapterFinetune
from metis_rt.train.loop import TrainingError, make_optimizer, train, train_step, trainable_params
from metis_rt.train.main import main
from metis_rt.train.objective import collate
from metis_rt.train.synthetic import synthetic_example, synthetic_examples
from metis_rt.train.windows import (
    SegmentPolicy,
    build_rows,
    plan_utterance,
    plan_window,
    streaming_segment,
    utterance_segment,
)

TINY_CONFIG = TRAIN_CONFIG_DIR / "finetune_tiny.yaml"
R, ALPHA = 2, 4.0  # differs from the tiny model dir's own LoRA (r 4): the export must carry it in config.json
CPU = torch.device("cpu")
FP32 = {"rtol": 1e-4, "atol": 1e-4}  # merged (served) vs unmerged (trained) LoRA in float32, CFG amplifies
STREAM = GeometryConfig(
    chunk_ms=80, lookahead_ms=40, left_context_ms=200, s2a_left_context_ms=200, decoder_left_context_ms=80
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster single-threaded, above all on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the loop, on a toy task
W_TRUE = torch.tensor([1.0, -2.0, 0.5, 3.0])


class ToyTask:
    """Linear regression; batches add global-generator noise, so resuming must restore the RNG too."""

    name = "toy"

    def __init__(self):
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)

    def modules(self):
        return {"net": self.net}

    def trainable(self):
        return list(self.net.parameters())

    def batches(self, examples, batch_size):
        rows = []
        for example in examples:
            rows.append(torch.from_numpy(example.clean_16k))
            if len(rows) == batch_size:
                yield torch.stack(rows) + 0.01 * torch.randn(len(rows), 4)
                rows = []

    def loss(self, x):
        err = self.net(x)[:, 0] - x @ W_TRUE
        return (err**2).mean(), {"mae": float(err.detach().abs().mean())}

    def export(self, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), out_dir / "toy.pt")
        return [out_dir / "toy.pt"]


def toy_examples(epoch: int, count: int = 6) -> list[Example]:
    gen = np.random.default_rng(epoch)
    rows = gen.standard_normal((count, 4)).astype(np.float32)
    return [Example("clean", r, r, r) for r in rows]


TOY_LOOP = LoopConfig(
    steps=8, batch_size=2, lr=0.5, warmup_steps=2, log_every=3, valid_every=4, valid_batches=2,
    checkpoint_every=2, progress=False,
)  # fmt: skip


class Interrupt(Exception):
    pass


def crashing_feed(after: int):
    """toy_examples, raising Interrupt when example number ``after`` (over all epochs) is requested."""
    served = itertools.count()

    def factory(epoch: int):
        for example in toy_examples(epoch):
            if next(served) == after:
                raise Interrupt
            yield example

    return factory


def test_loop_lowers_the_loss_and_writes_curves_and_export(tmp_path):
    result = train(ToyTask(), toy_examples, TOY_LOOP, tmp_path, valid_factory=lambda: toy_examples(99))
    rows = read_csv(result.losses_csv)
    assert [(int(r["step"]), r["split"]) for r in rows] == [
        (3, "train"), (4, "valid"), (6, "train"), (8, "train"), (8, "valid"),
    ]  # fmt: skip
    train_losses = [float(r["loss"]) for r in rows if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert {"mae", "grad_norm"} <= set(rows[0])
    assert result.loss_curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.exported == [tmp_path / "export" / "toy.pt"] and result.checkpoint.is_file()
    with pytest.raises(TrainingError, match="--resume"):
        train(ToyTask(), toy_examples, TOY_LOOP, tmp_path)


def test_resumed_run_equals_uninterrupted(tmp_path):
    valid = lambda: toy_examples(99)  # noqa: E731
    full_task = ToyTask()
    full = train(full_task, toy_examples, TOY_LOOP, tmp_path / "full", valid_factory=valid)
    with pytest.raises(Interrupt):  # dies fetching step 6's batch (example 11, in epoch 1): checkpoint at step 4
        train(ToyTask(), crashing_feed(after=10), TOY_LOOP, tmp_path / "cut", valid_factory=valid)
    resumed_task = ToyTask()
    resumed = train(resumed_task, toy_examples, TOY_LOOP, tmp_path / "cut", valid_factory=valid, resume=True)
    for a, b in zip(full_task.net.parameters(), resumed_task.net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert read_csv(full.losses_csv) == read_csv(resumed.losses_csv)


# ----------------------------------------------------------------------------- fine-tuning
def finetune_task(model_dir: Path, **options) -> AdapterFinetune:
    torch.manual_seed(0)
    opts = FinetuneOptions(model_dir=str(model_dir), lora_r=R, lora_alpha=ALPHA, geometry=STREAM)
    return AdapterFinetune(dataclasses.replace(opts, **options), CPU)


@pytest.fixture(scope="module")
def trained(combined_model_dir):
    """An SE task after 8 steps on one fixed batch: (task, state before, batch, losses)."""
    task = finetune_task(combined_model_dir)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    batch = next(task.batches(iter(synthetic_examples("se", 2, 0.6, seed=0)), 2))
    cfg = LoopConfig(lr=1e-2, warmup_steps=0, steps=8)
    params = trainable_params(task)
    opt, sched = make_optimizer(params, cfg)
    losses = [train_step(task, itertools.repeat(batch), params, opt, sched, cfg, CPU)[0] for _ in range(cfg.steps)]
    return task, before, batch, losses


def test_finetune_lowers_the_loss_on_a_fixed_batch(trained):
    task, _, batch, losses = trained
    assert losses[-1] < 0.8 * losses[0], losses
    assert float(task.model.cond_adapter.gate_scale.detach()) != 0.0  # the zero-initialised gate opened
    assert int(batch.masked.sum()) > 0 and not bool((batch.masked & ~batch.valid).any())


def test_finetune_changes_only_lora_and_adapter_tensors(trained):
    task, before, _, _ = trained
    after = task.model.state_dict()
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in after if is_lora_key(k) or k.startswith("cond_adapter.")}
    for key, value in after.items():
        if key in trainable:
            assert not torch.equal(before[key], value), f"{key} did not train"
        else:
            assert torch.equal(before[key], value), f"frozen tensor {key} changed"
    held = task.modules()["adapter_weights"].state_dict()  # what a checkpoint holds: the trainable tensors only
    assert {v.data_ptr() for v in held.values()} == {after[k].data_ptr() for k in trainable}


def stage1_logits(model, seed: int = 3) -> torch.Tensor:
    """Conditional and CFG-guided logits of fixed inputs (the inference path): [2, 1, Tt, V]."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    tp, tt = 4, 6
    inputs = Stage1Inputs(
        torch.randint(0, cfg.cond_codebook_size, (1, tp), generator=gen),
        torch.randn(1, tp + tt, cfg.cond_dim, generator=gen),
    )
    seq = torch.randint(0, cfg.cond_codebook_size, (1, tt), generator=gen)
    mask = torch.rand(1, tt, generator=gen) < 0.5
    with torch.no_grad():
        prep = model.prepare(inputs, tt)
        cond, guided = model.hidden(prep, model.target_rows(seq, mask), torch.tensor([0.4]), 1.0, 0.75)
        return torch.stack([model.to_logit(cond), model.to_logit(guided)])


def test_export_reloads_through_the_normal_loader(trained, tmp_path):
    task = trained[0]
    written = task.export(tmp_path)
    lora_file = tmp_path / "metis_se/metis_se_lora_2.safetensors"
    adapter_file = tmp_path / "metis_se/metis_se_lora_2_adapter.safetensors"
    assert lora_file in written and adapter_file in written
    with safe_open(str(adapter_file), "pt") as f:
        assert sorted(f.keys()) == [
            "model.cond_adapter.gate_scale", "model.cond_adapter.in_linear.bias", "model.cond_adapter.in_linear.weight",
            "model.cond_adapter.out_linear.bias", "model.cond_adapter.out_linear.weight",
        ]  # fmt: skip
    with safe_open(str(lora_file), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == 2 * 7 * task.cfg.stage1.num_layers
    assert all(k.startswith("model.diff_estimator.layers.") and k.endswith(".default.weight") for k in keys)
    cfg, _ = resolve_config(tmp_path, "se")
    assert cfg.lora_for("se") == LoraConfig(R, ALPHA)
    served = load_stage1(tmp_path, "se", cfg)
    torch.testing.assert_close(stage1_logits(served), stage1_logits(task.model), **FP32)
    comps = load_components(tmp_path, ["se"], cfg)  # every serving file is linked
    torch.testing.assert_close(stage1_logits(comps.stage1["se"]), stage1_logits(task.model), **FP32)


def test_export_carries_the_base_models_own_settings(trained, combined_model_dir, tmp_path):
    """A base directory with a metis-rt.yaml (e.g. the compact sizes) exports task models that use it too."""
    base = tmp_path / "base"
    base.mkdir()
    for entry in combined_model_dir.iterdir():
        (base / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    (base / MODEL_SETTINGS).write_text("streaming:\n  steps:\n    se: {stage1: 3}\n")
    task = trained[0]
    out = tmp_path / "export"
    written = export_task_model(task.model, "se", LoraConfig(R, ALPHA), base, out, task.cfg)
    assert out / MODEL_SETTINGS in written
    assert load_stream_config_for(out).steps_for("se").stage1 == 3
    assert load_stream_config_for(combined_model_dir).steps_for("se").stage1 != 3  # not merely the default


def test_official_init_reproduces_the_released_model(combined_model_dir):
    cfg, _ = resolve_config(combined_model_dir, "tse")
    lora = cfg.lora_for("tse")
    task = finetune_task(combined_model_dir, task="tse", init="official", lora_r=lora.r, lora_alpha=lora.alpha)
    released = load_stage1(combined_model_dir, "tse", cfg)
    torch.testing.assert_close(stage1_logits(task.model), stage1_logits(released), **FP32)
    with pytest.raises(ConfigError, match="init: official"):
        finetune_task(combined_model_dir, task="tse", init="official", lora_r=lora.r + 1)


# ----------------------------------------------------------------------------- rows: utterances and stream windows
@pytest.fixture(scope="module")
def engine_parts(combined_model_dir):
    """The offline pipeline and the streaming engine's window processor over the tiny components."""
    cfg, _ = resolve_config(combined_model_dir, "tse")
    comps = load_components(combined_model_dir, [], cfg)
    return MetisPipeline(comps), MetisWindowProcessor(comps)


def test_streaming_rows_have_the_engine_window_shapes(trained, engine_parts):
    pipeline, processor = engine_parts
    feat, geometry = trained[0].featurizer, Geometry.from_config(STREAM)
    example = synthetic_example("tse", 0, 1.2, seed=3)
    with torch.inference_mode():  # as the engine runs (attention kernels differ in float noise with autograd on)
        clean_tokens = pipeline.semantic_tokens(example.clean_16k)[0]
    reference = processor.prepare_reference(example.reference_16k, example.reference_24k)
    for hop in (0, 1, 4):  # stream start (no / short left context) and a full left context
        left, start, end = geometry.window(hop)
        row = streaming_segment(example, feat, geometry, SegmentPolicy(prompt_drop_prob=0.0), hop=hop)
        first, last = geometry.ssl_window_samples(hop)
        assert row.target == geometry.chunk + geometry.lookahead
        assert row.prompt == reference.frames + left
        torch.testing.assert_close(row.ids, torch.cat([reference.semantic, clean_tokens[start:end]]))
        with torch.inference_mode():
            window = processor.comps.ssl(example.degraded_16k[first:last])[0]  # the engine's pass over the window
        torch.testing.assert_close(row.condition, torch.cat([reference.features, window]))
    dropped = streaming_segment(example, feat, geometry, SegmentPolicy(prompt_drop_prob=1.0), hop=4)
    assert dropped.prompt == 0 and len(dropped.ids) == geometry.chunk + geometry.lookahead


def test_utterance_rows_follow_the_offline_pipeline(trained, engine_parts):
    pipeline = engine_parts[0]
    feat = trained[0].featurizer
    example = synthetic_example("tse", 1, 0.6, seed=4)
    torch.manual_seed(0)
    row = utterance_segment(example, feat, SegmentPolicy(prompt_drop_prob=0.0, prefix_prob=0.0))
    with torch.inference_mode():
        ref_tokens = pipeline.semantic_tokens(example.reference_16k)[0]
        joint = pipeline.comps.ssl(np.concatenate([example.reference_16k, example.degraded_16k]))[0]  # as run()
    assert row.prompt == len(ref_tokens) and len(row.ids) <= len(joint)
    torch.testing.assert_close(row.ids[: row.prompt], ref_tokens)
    torch.testing.assert_close(row.condition, joint[: len(row.ids)])
    se = utterance_segment(synthetic_example("se", 0, 0.6, seed=0), feat, SegmentPolicy(prompt_drop_prob=0.0))
    assert 0 <= se.prompt < len(se.ids)  # a random clean prefix of the target


def test_batched_rows_equal_rows_made_one_by_one(trained):
    feat, geometry = trained[0].featurizer, Geometry.from_config(STREAM)
    examples = [synthetic_example("tse", i, 1.2, seed=5) for i in range(3)]
    torch.manual_seed(1)
    plans = [plan_window(ex, geometry, SegmentPolicy(prompt_drop_prob=0.0), hop=4) for ex in examples]
    plans.append(plan_utterance(examples[0], SegmentPolicy(prompt_drop_prob=0.0)))
    for together, alone in zip(build_rows(plans, feat), [build_rows([p], feat)[0] for p in plans], strict=True):
        assert torch.equal(together.ids, alone.ids) and together.prompt == alone.prompt
        torch.testing.assert_close(together.condition, alone.condition, rtol=1e-4, atol=5e-4)  # batched kernels


def test_a_built_training_set_feeds_streaming_fine_tuning(trained, tmp_path):
    """metis-rt data build-train's examples (espeak-ng + flite, see test_train_data) through the set feed."""
    build_train_set(tmp_path / "set", seed=0, minutes=0.5, sources=("espeak-ng", "flite"), progress=False)
    data = DataConfig(source="set", set_dir=str(tmp_path / "set"), task="vc", segment_s=1.5, reference_s=1.0)
    with pytest.raises(MetisError, match="valid"):  # a set too small for a valid split fails before training
        example_feeds(data)
    train_feed, valid_feed = example_feeds(dataclasses.replace(data, valid=False))
    assert valid_feed is None
    geometry, policy = Geometry.from_config(GeometryConfig()), SegmentPolicy(prompt_drop_prob=0.0)
    rows = [streaming_segment(ex, trained[0].featurizer, geometry, policy) for ex in itertools.islice(train_feed(0), 2)]
    batch = collate(rows)
    assert all(r.target == geometry.chunk + geometry.lookahead for r in rows)
    assert bool((batch.prompt > 0).all())  # the reference (+ left context) is the prompt


# ----------------------------------------------------------------------------- configs and the command line
def test_train_configs_parse_and_reject_unknown_keys():
    finetune = [p for p in sorted(TRAIN_CONFIG_DIR.glob("*.yaml")) if load_train_config(p).trainer == "finetune"]
    assert {p.stem for p in finetune} >= {
        "finetune_se",
        "finetune_se_streaming",
        "finetune_tse",
        "finetune_vc",
        "finetune_tiny",
    }
    for path in finetune:
        run = load_train_config(path)
        opts = parse_options(FinetuneOptions, run.options)
        assert opts.task == run.data.task, path
    assert parse_options(FinetuneOptions, load_train_config(TINY_CONFIG, ["options.lora_r=8"]).options).lora_r == 8
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config(TINY_CONFIG, ["loop.stepz=3"])
    with pytest.raises(ConfigError, match="window_mode"):
        parse_options(FinetuneOptions, {"window_mode": "sliding"})


def test_cli_runs_a_tiny_config_end_to_end(tmp_path, combined_model_dir, capsys):
    out = tmp_path / "run"
    args = [
        str(TINY_CONFIG),
        f"out_dir={out}",
        f"options.model_dir={combined_model_dir}",
        "options.window_mode=streaming",
    ]
    assert main(args) == 0
    assert "results in" in capsys.readouterr().out
    rows = read_csv(out / "losses.csv")
    assert [(r["step"], r["split"]) for r in rows] == [("1", "train"), ("2", "train"), ("2", "valid")]
    assert (out / "loss_curve.png").is_file() and (out / "train_config.yaml").is_file()
    cfg, _ = resolve_config(out / "export", "se")
    assert load_stage1(out / "export", "se", cfg).has_adapter
    assert main(args) == 2  # refuses to overwrite the run without --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # already finished: re-exports
