"""From-scratch pre-training (metis_rt.train.pretrain): each trainer lowers its loss on a fixed tiny batch, each export
reloads through the normal loaders and reproduces the trained module, and the five exports make one model directory
that ``load_components`` loads and the pipeline runs. Tiny configs (configs/train/pretrain_*_tiny.yaml), CPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from metis_rt.audio.files import read_audio, resample, to_mono
from metis_rt.config import S2ADecoding, Stage1Decoding
from metis_rt.models.acoustic_codec import AcousticCodec
from metis_rt.models.decoding import ZeroNoise
from metis_rt.models.semantic_codec import SemanticCodec
from metis_rt.models.ssl import SslFeatures
from metis_rt.models.stage1 import Stage1Inputs
from metis_rt.models.stage1_loading import load_stage1
from metis_rt.pipeline.components import (
    CODEC_DECODER_FILE,
    CODEC_ENCODER_FILE,
    S2A_FILES,
    SEMANTIC_CODEC_FILE,
    load_components,
    load_s2a,
)
from metis_rt.pipeline.offline import MetisPipeline
from metis_rt.train.config import TRAIN_CONFIG_DIR, load_train_config
from metis_rt.train.example import Example
from metis_rt.train.pretrain import acoustic_codec, base, s2a, semantic_codec, ssl
from metis_rt.train.pretrain.config_json import assemble_model_dir, pretrained_model_config
from metis_rt.train.pretrain.vq import residual_quantize
from tests.conftest import EXAMPLES_DIR

STEPS = 4
BATCH = 4
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared CPU OpenMP spinning costs seconds per step."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_options(name: str, **dirs: Path) -> dict:
    run = load_train_config(TRAIN_CONFIG_DIR / f"pretrain_{name}_tiny.yaml")
    return {**run.options, **{k: str(v) for k, v in dirs.items()}}


def clip(wav_16k: np.ndarray) -> Example:
    wav_16k = wav_16k.astype(np.float32)
    return Example("clean", wav_16k, resample(wav_16k, 16000, 24000).astype(np.float32), wav_16k)


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    """Two speech clips, a chirp and noise (all >= 1.5 s)."""
    t = np.arange(24000) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t)
    noise = 0.05 * np.random.default_rng(0).standard_normal(24000)
    speech = [to_mono(read_audio(EXAMPLES_DIR / f"{n}.wav")[0]) for n in ("reference", "speech_noisy")]
    return [clip(x) for x in (*speech, chirp, noise)]


@dataclass
class Run:
    task: object
    batch: object
    losses: list[float]
    out: Path


def fit(task, examples, out: Path, lr: float) -> Run:
    """A fixed batch, ``STEPS`` Adam steps on it, then the export."""
    batch = next(task.batches(iter(examples), BATCH))
    opt = torch.optim.Adam(list(task.trainable()), lr=lr)
    losses = []
    for _ in range(STEPS):
        loss, _ = task.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    task.export(out)
    for module in task.modules().values():
        module.eval()
    return Run(task, batch, losses, out)


@pytest.fixture(scope="module")
def ssl_run(examples, tmp_path_factory) -> Run:
    torch.manual_seed(0)
    return fit(ssl.build(tiny_options("ssl")), examples, tmp_path_factory.mktemp("ssl"), lr=3e-3)


@pytest.fixture(scope="module")
def semantic_run(examples, ssl_run, tmp_path_factory) -> Run:
    torch.manual_seed(0)
    task = semantic_codec.build(tiny_options("semantic_codec", ssl_dir=ssl_run.out))
    return fit(task, examples, tmp_path_factory.mktemp("semantic"), lr=3e-3)


@pytest.fixture(scope="module")
def acoustic_run(examples, tmp_path_factory) -> Run:
    torch.manual_seed(0)
    task = acoustic_codec.build(tiny_options("acoustic_codec"))
    return fit(task, examples, tmp_path_factory.mktemp("acoustic"), lr=1e-3)  # VQ terms jump at 3e-3


@pytest.fixture(scope="module")
def base_run(examples, ssl_run, semantic_run, tmp_path_factory) -> Run:
    torch.manual_seed(0)
    task = base.build(tiny_options("base", ssl_dir=ssl_run.out, semantic_codec_dir=semantic_run.out))
    return fit(task, examples, tmp_path_factory.mktemp("base"), lr=3e-3)


@pytest.fixture(scope="module")
def s2a_run(examples, ssl_run, semantic_run, acoustic_run, tmp_path_factory) -> Run:
    torch.manual_seed(0)
    dirs = {"ssl_dir": ssl_run.out, "semantic_codec_dir": semantic_run.out, "acoustic_codec_dir": acoustic_run.out}
    task = s2a.build(tiny_options("s2a", **dirs))
    return fit(task, examples, tmp_path_factory.mktemp("s2a"), lr=3e-3)


@pytest.mark.parametrize("run", ["ssl_run", "semantic_run", "acoustic_run", "base_run", "s2a_run"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(run, request):
    losses = request.getfixturevalue(run).losses
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


def test_ssl_export_reproduces_the_trained_features(ssl_run, examples):
    index = ssl_run.task.cfg.hidden_state_index
    assert pretrained_model_config(ssl_run.out).ssl.hidden_state_index == index
    loaded = SslFeatures.load(ssl_run.out, hidden_state_index=index)
    wav = examples[0].clean_16k[:16000]
    with torch.no_grad():
        torch.testing.assert_close(loaded(wav), ssl_run.task.features(wav), atol=TOL, rtol=TOL)


def test_semantic_codec_export_reproduces_ids_and_keeps_the_decoder(semantic_run):
    task, feats = semantic_run.task, semantic_run.batch.features
    cfg = pretrained_model_config(semantic_run.out).semantic_codec
    assert cfg == task.codec_cfg
    loaded = SemanticCodec.load(semantic_run.out / SEMANTIC_CODEC_FILE, cfg)
    with torch.no_grad():
        ids, quantized = task.model.codec.quantize(feats)
        ids_loaded, quantized_loaded = loaded.quantize(feats)
    torch.testing.assert_close(ids_loaded, ids, atol=0, rtol=0)
    torch.testing.assert_close(quantized_loaded, quantized, atol=TOL, rtol=TOL)
    with safe_open(str(semantic_run.out / SEMANTIC_CODEC_FILE), "pt") as f:
        keys = set(f.keys())
    assert {"decoder.1.weight", "quantizer.quantizers.0.in_project.weight_g"} <= keys


def test_acoustic_codec_export_reproduces_encode_and_decode(acoustic_run):
    out = acoustic_run.out
    cfg = pretrained_model_config(out)
    assert (cfg.codec_encoder, cfg.codec_decoder) == (acoustic_run.task.cfg.encoder, acoustic_run.task.cfg.decoder)
    loaded = AcousticCodec.load(
        out / CODEC_ENCODER_FILE, out / CODEC_DECODER_FILE, cfg.codec_encoder, cfg.codec_decoder
    )
    wav = acoustic_run.batch.wav[:1]
    with torch.no_grad():
        ids = acoustic_run.task.codec.encode(wav)
        torch.testing.assert_close(loaded.encode(wav), ids, atol=0, rtol=0)
        torch.testing.assert_close(loaded.decode(ids), acoustic_run.task.codec.decode(ids), atol=TOL, rtol=TOL)
    with safe_open(str(out / CODEC_DECODER_FILE), "pt") as f:
        window = f.get_tensor("model.head.istft.window")
    torch.testing.assert_close(window, torch.hann_window(cfg.codec_decoder.n_fft))


def test_base_export_reproduces_the_logits(base_run):
    cfg = pretrained_model_config(base_run.out)
    loaded = load_stage1(base_run.out, "base", cfg)
    b = base_run.batch
    with torch.no_grad():
        want = base_run.task.logits(b.ids, b.mask, b.t)
        got = loaded.to_logit(loaded.diff_estimator(loaded.target_rows(b.ids, b.mask), b.t))
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("which", ["s2a_1layer", "s2a_full"])
def test_s2a_exports_reproduce_the_logits(s2a_run, which):
    cfg = pretrained_model_config(s2a_run.out)
    loaded = load_s2a(s2a_run.out, which, cfg, dtype=torch.float32, device="cpu")
    trained = s2a_run.task.modules()[which]
    b = s2a_run.batch
    layer, draw = (0, b.draw_1layer) if which == "s2a_1layer" else (b.full_layer, b.draw_full)
    with torch.no_grad():
        want = s2a.s2a_logits(trained, b.semantic, b.acoustic, draw, layer)
        got = s2a.s2a_logits(loaded, b.semantic, b.acoustic, draw, layer)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    with safe_open(str(s2a_run.out / S2A_FILES[which]), "pt") as f:
        assert s2a.EMBED_TOKENS_ARTEFACT in set(f.keys())


def test_five_exports_make_one_loadable_model_dir(ssl_run, semantic_run, acoustic_run, base_run, s2a_run, tmp_path):
    parts = [r.out for r in (ssl_run, semantic_run, acoustic_run, base_run, s2a_run)]
    model_dir = assemble_model_dir(parts, tmp_path / "small")
    cfg = pretrained_model_config(model_dir)
    assert cfg.ssl.hidden_state_index == ssl_run.task.cfg.hidden_state_index
    assert cfg.stage1.cond_codebook_size == cfg.semantic_codec.codebook_size == cfg.s2a_full.cond_codebook_size
    comps = load_components(model_dir, ["base"], cfg)
    pipe = MetisPipeline(comps)
    n_q = cfg.codec_decoder.num_quantizers
    with torch.inference_mode():
        source = np.sin(2 * np.pi * 200 * np.arange(16000) / 16000).astype(np.float32)
        wav_24k = resample(source, 16000, 24000).astype(np.float32)
        semantic = pipe.semantic_tokens(source)
        prompt = semantic[:, :10]
        generated = comps.stage1["base"].generate(Stage1Inputs(prompt), 15, Stage1Decoding(steps=2), ZeroNoise())
        prompt_acoustic = pipe.acoustic_tokens(wav_24k[: 10 * 480])
        decoding = S2ADecoding(steps_1layer=(2,), steps_full=(2,) + (1,) * (n_q - 1))
        acoustic, _ = pipe.semantic_to_acoustic(
            torch.cat([prompt, generated], 1), prompt_acoustic, decoding, ZeroNoise()
        )
        wav = pipe.code_to_wav(acoustic)
    assert semantic.shape == (1, 49) and generated.shape == (1, 15)
    assert prompt_acoustic.shape == (1, 10, n_q) and acoustic.shape == (1, 15, n_q)
    assert wav.shape == (1, 15 * 480) and bool(torch.isfinite(wav).all())


def test_runs_through_the_training_loop_and_resumes(tmp_path):
    """The tiny SSL run file through the shared loop: checkpoint, export, then a resumed step."""
    from metis_rt.train.feeds import example_feeds
    from metis_rt.train.loop import train

    out = tmp_path / "run"
    run = load_train_config(TRAIN_CONFIG_DIR / "pretrain_ssl_tiny.yaml", [f"out_dir={out}"])
    feed, valid = example_feeds(run.data)
    result = train(ssl.build(run.options, run), feed, run.loop, run.out_dir, valid_factory=valid)
    assert result.steps == run.loop.steps and (out / "export" / "wav2vec2bert_stats.pt").is_file()
    longer = load_train_config(
        TRAIN_CONFIG_DIR / "pretrain_ssl_tiny.yaml", [f"out_dir={out}", f"loop.steps={run.loop.steps + 1}"]
    )
    resumed = train(ssl.build(longer.options, longer), feed, longer.loop, out, valid_factory=valid, resume=True)
    assert resumed.steps == run.loop.steps + 1
    SslFeatures.load(out / "export", hidden_state_index=run.options["hidden_state_index"])


def test_every_pretrain_run_file_parses_into_its_options():
    from metis_rt.errors import ConfigError
    from metis_rt.train.pretrain import TRAINER_MODULES
    from metis_rt.train.pretrain.common import parse_options

    options_class = {
        "pretrain-ssl": ssl.SslPretrainConfig,
        "pretrain-semantic-codec": semantic_codec.SemanticCodecPretrainConfig,
        "pretrain-acoustic-codec": acoustic_codec.AcousticCodecPretrainConfig,
        "pretrain-base": base.BasePretrainConfig,
        "pretrain-s2a": s2a.S2APretrainConfig,
    }
    assert set(options_class) == set(TRAINER_MODULES)
    paths = sorted(TRAIN_CONFIG_DIR.glob("pretrain_*.yaml"))
    assert len(paths) == 2 * len(options_class)  # an example and a tiny run file each
    for path in paths:
        run = load_train_config(path)
        assert run.data.task == "clean", path
        parse_options(options_class[run.trainer], run.options, path.name)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_options(ssl.SslPretrainConfig, {"hidden_size": 8}, "ssl")
    with pytest.raises(ConfigError, match="hidden_state_index"):
        parse_options(ssl.SslPretrainConfig, {"hidden_state_index": 7}, "ssl")


def test_acoustic_codec_data_init_spreads_the_first_codes_and_runs_once(examples):
    """DataInit (vq.py): centred encoder output, zero in_project biases, codebooks seeded from the batch's own
    latents, so the first batch uses many more stage-0 codes than random codebooks do; a second call is a no-op."""
    torch.manual_seed(0)
    task = acoustic_codec.build(tiny_options("acoustic_codec"))
    batch = next(task.batches(iter(examples), BATCH))
    rvq = task.decoder.quantizer
    with torch.no_grad():
        before = residual_quantize(rvq, task.encoder(batch.wav[:, None, :])).ids[..., 0].unique().numel()
        task.loss(batch)  # the first loss call initialises
        latent = task.encoder(batch.wav[:, None, :])
        after = residual_quantize(rvq, latent).ids[..., 0].unique().numel()
    assert bool(task.data_init.done)
    torch.testing.assert_close(latent.mean(dim=(0, 2)), torch.zeros(latent.shape[1]), atol=1e-5, rtol=0)
    assert all(float(f.in_project.bias.abs().max()) == 0.0 for f in rvq.quantizers)
    assert after >= 2 * before, (before, after)
    snapshot = rvq.quantizers[0].codebook.weight.clone()
    with torch.no_grad():
        assert not task.data_init.initialise(task.encoder_out_conv(), rvq, latent)
    assert torch.equal(rvq.quantizers[0].codebook.weight, snapshot)
    # The offsets it set are left out of the optimiser (training them regrows the common direction).
    trainable = {id(p) for p in task.trainable()}
    assert id(task.encoder_out_conv().bias) not in trainable
    assert not any(id(f.in_project.bias) in trainable for f in rvq.quantizers)


def test_crops_cut_the_degraded_input_over_the_same_span(examples):
    from metis_rt.train.pretrain import common

    ex = examples[0]
    noisy = Example("se", ex.clean_16k, ex.clean_24k, 2.0 * ex.clean_16k)
    crop = common.crop_example(noisy, 20)
    np.testing.assert_array_equal(crop.degraded_16k, 2.0 * crop.wav_16k)
    other_length = common.crop_example(Example("vc", ex.clean_16k, ex.clean_24k, ex.clean_16k[:-320]), 20)
    assert other_length.degraded_16k is None  # another length: not aligned with the clean speech
    with pytest.raises(ValueError, match="data.task se"):
        common.stack_degraded_16k([crop, other_length])


def test_denoising_ssl_reads_the_degraded_input_and_predicts_clean_clusters(examples):
    """Same seed, same crops: denoising changes the encoder input only, the cluster targets stay the clean ones."""
    rng = np.random.default_rng(1)
    noisy = [
        Example("se", e.clean_16k, e.clean_24k, e.clean_16k + 0.1 * rng.standard_normal(len(e.clean_16k)))
        for e in examples
    ]
    batches = {}
    for denoising in (False, True):
        torch.manual_seed(0)
        task = ssl.build({**tiny_options("ssl"), "denoising": denoising})
        batches[denoising] = next(task.batches(iter(noisy), BATCH))
    assert torch.equal(batches[False].targets, batches[True].targets)
    assert not torch.allclose(batches[False].input_features, batches[True].input_features)
