"""TTS and L2S offline (`metis-rt process --task tts|l2s`), Metis-Omni as the stage-1 model, and their files.

Models: the tiny reference-vector directories (parity/tts, parity/l2s) and the combined tiny model directory.
"""

import re

import numpy as np
import pytest
import soundfile as sf
import torch

from metis_rt.cli import main
from metis_rt.config import TaskDecoding, stage1_variant
from metis_rt.errors import ConfigError
from metis_rt.models.decoding import ZeroNoise
from metis_rt.models.hub import check_model_dir, required_files
from metis_rt.pipeline.components import load_components, resolve_config
from metis_rt.pipeline.offline import MetisPipeline
from metis_rt.pipeline.tts import EDGE_FADE_S, MAX_SEGMENT_CHARS, TtsSynthesizer, split_text, target_length
from metis_rt.pipeline.visual import VisualFeatureError, check_features, l2s_condition
from metis_rt.text.tokenizer import PhoneTokenizer

from .conftest import EXAMPLES_DIR

REFERENCE = EXAMPLES_DIR / "reference.wav"
PROMPT_TEXT = "Well, a growing number of people are getting bored of all these heroes."
FAST = ["--stage1-steps", "2", "--s2a-steps", "2,2,1,1,1,1,1,1,1,1,1,1", "--deterministic", "--no-progress"]


# ----------------------------------------------------------------------------- text splitting and length rule
def test_split_text_keeps_every_word_in_order_and_bounds_the_pieces():
    text = (
        "Hello there. This is the second sentence, which is a little longer! Short one? "
        + " ".join(f"word{i}" for i in range(80))
        + ". The end."
    )
    pieces = split_text(text)
    assert " ".join(pieces).split() == text.split()
    assert all(len(p) <= MAX_SEGMENT_CHARS for p in pieces)
    assert len(pieces) >= 4
    assert pieces[0].startswith("Hello there.")  # too short alone: joined with the next sentence
    assert split_text("One sentence only.") == ["One sentence only."]


def test_target_length_is_the_official_bytes_rule():
    assert target_length(54, "That's true.", PROMPT_TEXT) == 54 * 12 // len(PROMPT_TEXT)
    assert target_length(50, "é", "ab") == 50  # UTF-8 bytes, not characters: "é" is 2 bytes
    with pytest.raises(ValueError, match="transcript is empty"):
        target_length(50, "text", "")


# ----------------------------------------------------------------------------- TTS through the library
@pytest.fixture(scope="module")
def tts_parts(parity_dir):
    cfg, official = resolve_config(parity_dir / "tts", "tts")
    comps = load_components(parity_dir / "tts", ["tts"], cfg)
    settings = official.decoding["tts"]
    fast = TaskDecoding(
        type(settings.stage1)(3, settings.stage1.cfg, settings.stage1.rescale_cfg),
        type(settings.s2a)(steps_1layer=(2,), steps_full=(2, 2, *([1] * 10))),
    )
    return MetisPipeline(comps), PhoneTokenizer.load(parity_dir / "tts"), fast


def _voice(tts):
    wav, sr = sf.read(REFERENCE, dtype="float32")
    import soxr

    return tts.voice(
        torch.from_numpy(soxr.resample(wav, sr, 16000)), torch.from_numpy(soxr.resample(wav, sr, 24000)), PROMPT_TEXT
    )


def test_tts_stream_of_one_sentence_equals_the_whole_utterance(tts_parts):
    pipeline, tokenizer, settings = tts_parts
    tts = TtsSynthesizer(pipeline, tokenizer, settings)
    with torch.inference_mode():
        voice = _voice(tts)
        text = "But times have changed, and things are unclear."
        whole = tts.utterance(voice, text, ZeroNoise()).wav.float().numpy()
        pieces = list(tts.stream(voice, text, ZeroNoise()))
    assert len(pieces) == 1 and len(pieces[0]) == len(whole)
    fade = int(EDGE_FADE_S * 24000)
    np.testing.assert_array_equal(pieces[0][fade:-fade], whole[fade:-fade])  # only the 5 ms edge fades differ


def test_tts_stream_speaks_each_sentence_at_the_prompts_rate(tts_parts):
    pipeline, tokenizer, settings = tts_parts
    tts = TtsSynthesizer(pipeline, tokenizer, settings)
    text = "That is the first sentence of two. And here comes the second sentence, a longer one than the first."
    with torch.inference_mode():
        voice = _voice(tts)
        pieces = list(tts.stream(voice, text, ZeroNoise()))
    tp, ta = voice.semantic_ids.shape[1], voice.acoustic_ids.shape[1]
    expected = [(tp + target_length(tp, s, PROMPT_TEXT) - ta) * 480 for s in split_text(text)]
    assert [len(p) for p in pieces] == expected and len(pieces) == 2
    assert all(np.isfinite(p).all() and p.std() > 0 for p in pieces)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "nothing to say"), ("   ", "nothing to say"), ("x" * 1001, "at most 1000")],
)
def test_tts_bad_text_fails_before_any_audio(tts_parts, text, message):
    pipeline, tokenizer, settings = tts_parts
    tts = TtsSynthesizer(pipeline, tokenizer, settings)
    with torch.inference_mode():
        voice = _voice(tts)
        with pytest.raises(ValueError, match=message):
            next(tts.stream(voice, text, ZeroNoise()))


# ----------------------------------------------------------------------------- L2S features
def test_l2s_condition_upsamples_linearly_and_zeroes_the_prompt_region():
    v = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    cond = l2s_condition(v, prompt_len=3)
    assert cond.shape == (1, 3 + 8, 2)
    assert torch.all(cond[0, :3] == 0)
    up = cond[0, 3:, 0]  # column 0 holds 0, 2, 4, 6
    expected = [0.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.0]  # 0.75/0.25 blends, edges clamped
    assert up.tolist() == expected


@pytest.mark.parametrize(
    ("features", "fps", "message"),
    [
        (np.zeros((50, 7), np.float32), 25, "expected 40 values per frame"),
        (np.zeros((50, 40), np.float32), 30, "takes features at 25 fps, got 30 fps"),
        (np.zeros((50,), np.float32), 25, "expected a [frames, 40] array"),
        (np.full((50, 40), np.nan, np.float32), 25, "finite"),
        (np.zeros((1, 40), np.float32), 25, "at least 2"),
        (np.zeros((25 * 61, 40), np.float32), 25, "at most 60 s"),
    ],
)
def test_bad_visual_features_are_refused_with_the_reason(features, fps, message):
    with pytest.raises(VisualFeatureError, match=re.escape(message)):
        check_features(features, 40, fps)


# ----------------------------------------------------------------------------- the CLI
def test_cli_tts_writes_speech_and_reports_time_to_first_audio(parity_dir, tmp_path, capsys):
    out = tmp_path / "tts.wav"
    args = ["process", "--task", "tts", "--text", "That's true. But times have changed, and things are unclear."]
    args += ["--reference", str(REFERENCE), "--reference-text", PROMPT_TEXT, "-o", str(out)]
    assert main([*args, "--model-dir", str(parity_dir / "tts"), *FAST]) == 0
    wav, sr = sf.read(out)
    assert sr == 24000 and np.isfinite(wav).all() and wav.std() > 0
    assert "first audio after" in capsys.readouterr().out


def test_cli_l2s_length_follows_the_video(parity_dir, tmp_path):
    frames = 30
    feats = tmp_path / "lips.npz"
    np.savez(feats, features=np.random.default_rng(0).standard_normal((frames, 40)).astype(np.float32), fps=25.0)
    out = tmp_path / "l2s.wav"
    args = ["process", "--task", "l2s", "--visual-features", str(feats), "--reference", str(REFERENCE)]
    assert main([*args, "-o", str(out), "--model-dir", str(parity_dir / "l2s"), *FAST]) == 0
    wav, sr = sf.read(out)
    assert sr == 24000 and wav.std() > 0
    # 2 semantic frames per video frame; the reference's semantic/acoustic prompt lengths may differ by one frame
    assert abs(len(wav) / 480 - 2 * frames) <= 1


def test_cli_omni_runs_se_and_refuses_l2s(combined_model_dir, tmp_path, capsys):
    out = tmp_path / "omni_se.wav"
    src = EXAMPLES_DIR / "speech_noisy.wav"
    args = ["process", "--task", "se", str(src), "-o", str(out), "--stage1", "omni"]
    assert main([*args, "--model-dir", str(combined_model_dir), *FAST]) == 0
    assert abs(sf.info(out).duration - sf.info(src).duration) < 0.03
    bad = ["process", "--task", "l2s", "--stage1", "omni", "--reference", str(REFERENCE), "-o", str(out)]
    assert main([*bad, "--model-dir", str(combined_model_dir)]) == 2
    assert "Metis-Omni does not do 'l2s'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_text", "nothing to say"),
        ("long_text", "at most 1000"),
        ("language", "xx"),
        ("no_reference_text", "needs --reference-text"),
        ("no_reference", "needs --reference"),
        ("input_given", "takes no input audio"),
        ("width", "expected 40 values per frame"),
        ("rate", "got 30 fps"),
        ("fps_mismatch", "the file says 25 fps but 50 fps was given"),
        ("no_features", "needs --visual-features"),
        ("missing_weights", "metis-rt download --tasks tts"),
    ],
)
def test_cli_generative_bad_input_gets_a_clear_error_and_writes_nothing(parity_dir, tmp_path, capsys, case, message):
    out = tmp_path / "out.wav"
    tts = ["--task", "tts", "--text", "Hello there.", "--reference-text", PROMPT_TEXT, "--reference", str(REFERENCE)]
    feats = tmp_path / "f.npy"
    np.save(feats, np.zeros((20, 40), np.float32))
    l2s = ["--task", "l2s", "--visual-features", str(feats), "--reference", str(REFERENCE)]
    model_dir = parity_dir / ("l2s" if case in ("width", "rate", "fps_mismatch", "no_features") else "tts")
    args = tts
    if case == "empty_text":
        args = [*tts[:2], "--text", " ", *tts[4:]]
    elif case == "long_text":
        args = [*tts[:2], "--text", "a" * 1001, *tts[4:]]
    elif case == "language":
        args = [*tts, "--language", "xx"]
    elif case == "no_reference_text":
        args = tts[:4] + tts[6:]
    elif case == "no_reference":
        args = tts[:6]
    elif case == "input_given":
        args = [str(EXAMPLES_DIR / "speech_noisy.wav"), *tts]
    elif case == "width":
        np.save(feats, np.zeros((20, 7), np.float32))
        args = l2s
    elif case == "rate":
        args = [*l2s, "--visual-fps", "30"]
    elif case == "fps_mismatch":
        feats = tmp_path / "f.npz"
        np.savez(feats, features=np.zeros((20, 40), np.float32), fps=25.0)
        args = ["--task", "l2s", "--visual-features", str(feats), "--reference", str(REFERENCE), "--visual-fps", "50"]
    elif case == "no_features":
        args = l2s[:2] + l2s[4:]
    elif case == "missing_weights":
        model_dir = tmp_path / "empty"
    assert main(["process", *args, "-o", str(out), "--model-dir", str(model_dir)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- which files each needs
def test_download_table_knows_tts_omni_and_l2s(tmp_path):
    assert stage1_variant("tts", "omni") == "omni" and stage1_variant("vc") == "vc"
    with pytest.raises(ConfigError, match="does not do 'l2s'"):
        stage1_variant("l2s", "omni")
    own = {
        t: {f.local_path for f in required_files([t])} - {f.local_path for f in required_files(["se"])}
        for t in ("tts", "omni", "l2s")
    }
    assert own["tts"] == {"t2s_model/model.safetensors"}
    assert own["omni"] == {"metis_omni/metis_omni.safetensors"}
    assert own["l2s"] == {"metis_l2s/metis_l2s.safetensors"}
    assert "metis_base/model.safetensors" not in {f.local_path for f in required_files(["tts", "omni", "l2s"])}
    with pytest.raises(Exception, match="metis-rt download --tasks omni"):
        check_model_dir(tmp_path, ["omni"])
