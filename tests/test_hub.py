"""Model-directory checks and downloads, all offline (the hub is faked or disabled)."""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path
from unittest.mock import Mock

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError

from metis_rt.config import TASKS, LoraConfig, ModelConfig
from metis_rt.errors import ConfigError, MetisError, MissingWeightsError
from metis_rt.models import hub

SHARED = {
    "metis_base/model.safetensors",
    "semantic_codec/model.safetensors",
    "acoustic_codec/model.safetensors",
    "acoustic_codec/model_1.safetensors",
    "s2a_model/s2a_model_1layer/model.safetensors",
    "s2a_model/s2a_model_full/model.safetensors",
    "w2v-bert-2.0/config.json",
    "w2v-bert-2.0/model.safetensors",
    "w2v-bert-2.0/preprocessor_config.json",
    "wav2vec2bert_stats.pt",
}
TASK_FILES = {
    "se": {"metis_se/metis_se_lora_32.safetensors", "metis_se/metis_se_lora_32_adapter.safetensors"},
    "tse": {"metis_tse/metis_tse_lora_32.safetensors", "metis_tse/metis_tse_lora_32_adapter.safetensors"},
    "vc": {"metis_vc/metis_vc_lora_16.safetensors", "metis_vc/metis_vc_lora_16_adapter.safetensors"},
}


def paths(files: list[hub.WeightFile]) -> list[str]:
    return [f.local_path for f in files]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


class FakeHub:
    """Stands in for hf_hub_download: serves fake cached files, failing for chosen (repo, filename) pairs."""

    def __init__(self, cache: Path, errors: dict[tuple[str, str], Exception] | None = None):
        self.cache = cache
        self.errors = errors or {}
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, repo_id, filename, *, repo_type="model", **kwargs):
        self.calls.append((repo_type, repo_id, filename))
        if (repo_id, filename) in self.errors:
            raise self.errors[(repo_id, filename)]
        blob = self.cache / repo_type / repo_id / filename
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(f"{repo_id}:{filename}")
        return str(blob)


# ----------------------------------------------------------------------------- required files
@pytest.mark.parametrize("task", TASKS)
def test_each_task_needs_shared_files_and_only_its_own(task):
    got = paths(hub.required_files([task]))
    assert len(got) == len(set(got)), "duplicates"
    assert set(got) == SHARED | TASK_FILES[task]


def test_se_does_not_need_tse_files():
    got = set(paths(hub.required_files(["se"])))
    assert not got & TASK_FILES["tse"]
    assert not got & TASK_FILES["vc"]


def test_several_tasks_share_files_once():
    got = paths(hub.required_files(["se", "tse", "vc", "se"]))
    assert len(got) == len(set(got))
    assert set(got) == SHARED | TASK_FILES["se"] | TASK_FILES["tse"] | TASK_FILES["vc"]


def test_table_local_paths_are_unique_and_relative():
    local = paths(list(hub.weight_table()))
    assert len(local) == len(set(local))
    assert all(not p.startswith("/") and ".." not in p for p in local)


def test_lora_rank_comes_from_config():
    cfg = ModelConfig(lora={**ModelConfig().lora, "vc": LoraConfig(8, 16)})
    got = set(paths(hub.required_files(["vc"], cfg)))
    assert "metis_vc/metis_vc_lora_8.safetensors" in got
    assert "metis_vc/metis_vc_lora_8_adapter.safetensors" in got


def test_unknown_task_and_missing_lora_config_are_rejected():
    with pytest.raises(ConfigError, match="unknown task"):
        hub.required_files(["denoise"])
    with pytest.raises(ConfigError, match="no task"):
        hub.required_files([])
    cfg = ModelConfig(lora={"se": LoraConfig(32, 64)})
    with pytest.raises(ConfigError, match="lora.tse"):
        hub.required_files(["se"], cfg)


def test_stats_file_comes_from_the_space_with_a_checked_mirror():
    (stats,) = [f for f in hub.weight_table() if f.local_path == "wav2vec2bert_stats.pt"]
    assert stats.source.repo_type == "space"
    assert stats.sha256 and stats.sha256.startswith("c9c176c2") and stats.sha256.endswith("526ad2")
    assert stats.mirrors


def test_default_model_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(hub.MODEL_DIR_ENV, str(tmp_path / "m"))
    assert hub.default_model_dir() == tmp_path / "m"
    monkeypatch.delenv(hub.MODEL_DIR_ENV)
    assert hub.default_model_dir() == Path("~/.cache/metis-rt/models").expanduser()


# ----------------------------------------------------------------------------- check_model_dir
def test_check_empty_dir_lists_missing_files_and_command(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        hub.check_model_dir(tmp_path, ["se"])
    err = info.value
    assert set(err.missing) == SHARED | TASK_FILES["se"]
    text = str(err)
    assert "metis_se/metis_se_lora_32.safetensors" in text
    assert f"metis-rt download --tasks se --model-dir {tmp_path}" in text


def test_check_full_dir_passes(tmp_path):
    for rel in SHARED | TASK_FILES["tse"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    hub.check_model_dir(tmp_path, ["tse"])
    with pytest.raises(MissingWeightsError) as info:
        hub.check_model_dir(tmp_path, ["tse", "vc"])
    assert set(info.value.missing) == TASK_FILES["vc"]
    assert "--tasks tse,vc" in str(info.value)


# ----------------------------------------------------------------------------- download
def test_download_offline_fails_fast_naming_files(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    start_s = time.monotonic()
    with pytest.raises(hub.DownloadError) as info:
        hub.download(tmp_path / "models", ["se"], cache_dir=tmp_path / "cache", progress=False)
    assert time.monotonic() - start_s < 10.0
    err = info.value
    assert isinstance(err, MetisError)
    assert set(err.failures) == SHARED | TASK_FILES["se"]
    text = str(err)
    assert "HF_HUB_OFFLINE=1" in text
    assert "metis_base/model.safetensors" in text
    assert hub.STATS_GITHUB_URL in text  # the by-hand way for the stats file


def test_download_builds_layout_and_skips_present_files(tmp_path, monkeypatch, no_network):
    fake = FakeHub(tmp_path / "cache")
    monkeypatch.setattr(hub, "hf_hub_download", fake)
    monkeypatch.setattr(hub, "_file_sha256", lambda path: hub.STATS_SHA256)
    model_dir = tmp_path / "models"
    (model_dir / "metis_vc").mkdir(parents=True)
    (model_dir / "metis_vc/metis_vc_lora_16.safetensors").write_text("mine")

    fetched = hub.download(model_dir, ["se", "vc"], progress=False)

    expected = SHARED | TASK_FILES["se"] | TASK_FILES["vc"]
    mine = "metis_vc/metis_vc_lora_16.safetensors"
    assert {p.relative_to(model_dir).as_posix() for p in fetched} == expected - {mine}
    assert (model_dir / mine).read_text() == "mine"
    w2v_text = (model_dir / "w2v-bert-2.0/model.safetensors").read_text()
    assert w2v_text == "facebook/w2v-bert-2.0:model.safetensors"
    space_path = "models/tts/maskgct/ckpt/wav2vec2bert_stats.pt"
    assert (model_dir / "wav2vec2bert_stats.pt").read_text() == f"amphion/maskgct:{space_path}"
    assert ("space", "amphion/maskgct", space_path) in fake.calls
    assert not list(model_dir.rglob("*" + hub.PARTIAL_SUFFIX))
    hub.check_model_dir(model_dir, ["se", "vc"])

    fake.calls.clear()
    assert hub.download(model_dir, ["se", "vc"], progress=False) == []
    assert fake.calls == []


def test_download_reports_each_failure_and_uses_the_stats_mirror(tmp_path, monkeypatch, no_network):
    stats_src = hub.STATS.source
    gated = GatedRepoError("restricted", response=Mock(status_code=401))
    errors = {
        ("facebook/w2v-bert-2.0", "model.safetensors"): gated,
        (stats_src.repo_id, stats_src.filename): EntryNotFoundError("Entry not found"),
    }
    fake = FakeHub(tmp_path / "cache", errors)
    monkeypatch.setattr(hub, "hf_hub_download", fake)
    monkeypatch.setattr(hub, "_file_sha256", lambda path: hub.STATS_SHA256)

    with pytest.raises(hub.DownloadError) as info:
        hub.download(tmp_path / "m", ["tse"], progress=False)

    assert set(info.value.failures) == {"w2v-bert-2.0/model.safetensors"}
    assert "gated repository" in str(info.value)
    assert (tmp_path / "m/wav2vec2bert_stats.pt").read_text() == "IndexTeam/IndexTTS-2:wav2vec2bert_stats.pt"
    assert (tmp_path / "m/metis_tse/metis_tse_lora_32.safetensors").is_file()


def test_download_rejects_a_stats_file_with_the_wrong_hash(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(hub, "hf_hub_download", FakeHub(tmp_path / "cache"))
    with pytest.raises(hub.DownloadError) as info:
        hub.download(tmp_path / "m", ["se"], progress=False)
    assert set(info.value.failures) == {"wav2vec2bert_stats.pt"}
    reasons = info.value.failures["wav2vec2bert_stats.pt"]
    assert sum("sha256 mismatch" in r for r in reasons) == 2  # the Space and the mirror
    assert not (tmp_path / "m/wav2vec2bert_stats.pt").exists()


def test_connection_failure_stops_network_use_for_later_files(tmp_path, monkeypatch, no_network):
    calls = []

    def unreachable(repo_id, filename, *, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        try:
            raise ConnectionError("DNS lookup failed")
        except ConnectionError as exc:
            raise hub.LocalEntryNotFoundError("cannot find the requested files") from exc

    monkeypatch.setattr(hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.DownloadError) as info:
        hub.download(tmp_path, ["vc"], progress=False)
    assert calls[0] is False and all(calls[1:])
    assert "DNS lookup failed" in str(info.value)


def test_weight_file_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        hub.STATS.local_path = "x"  # type: ignore[misc]
