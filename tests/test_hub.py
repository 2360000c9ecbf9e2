"""Model-directory checks and downloads, all offline (the hub is faked or disabled)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import time
from pathlib import Path
from unittest.mock import Mock

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError

from metis_rt.config import TASKS, LoraConfig, ModelConfig
from metis_rt.errors import ConfigError, MetisError, MissingWeightsError
from metis_rt.models import download as dl
from metis_rt.models import hub, hub_pins
from metis_rt.models.verify import NOTHING_KNOWN, Expected, IntegrityError, verify_file

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
        self.revisions: dict[tuple[str, str], str | None] = {}
        self.offline_flags: list[bool] = []

    def __call__(self, repo_id, filename, *, repo_type="model", revision=None, local_files_only=False, **kwargs):
        self.calls.append((repo_type, repo_id, filename))
        self.revisions[(repo_id, filename)] = revision
        self.offline_flags.append(local_files_only)
        if (repo_id, filename) in self.errors:
            raise self.errors[(repo_id, filename)]
        blob = self.cache / repo_type / repo_id / filename
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(self.content(repo_id, filename))
        return str(blob)

    @staticmethod
    def content(repo_id: str, filename: str) -> str:
        return f"{repo_id}:{filename}"


@pytest.fixture
def unchecked(monkeypatch):
    """The stats file's published hash/size replaced by nothing (fake files cannot match Amphion's)."""
    monkeypatch.setattr(hub, "STATS", dataclasses.replace(hub.STATS, expected=NOTHING_KNOWN))


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
    sha = stats.expected.sha256
    assert sha and sha.startswith("c9c176c2") and sha.endswith("526ad2") and stats.expected.size_bytes == 9343
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
    with pytest.raises(dl.DownloadError) as info:
        dl.download(tmp_path / "models", ["se"], cache_dir=tmp_path / "cache", progress=False)
    assert time.monotonic() - start_s < 10.0
    err = info.value
    assert isinstance(err, MetisError)
    assert set(err.failures) == SHARED | TASK_FILES["se"]
    text = str(err)
    assert "HF_HUB_OFFLINE=1" in text
    assert "metis_base/model.safetensors" in text
    assert hub.STATS_GITHUB_URL in text  # the by-hand way for the stats file


def test_download_builds_layout_and_skips_present_files(tmp_path, monkeypatch, no_network, unchecked):
    fake = FakeHub(tmp_path / "cache")
    monkeypatch.setattr(dl, "hf_hub_download", fake)
    model_dir = tmp_path / "models"
    (model_dir / "metis_vc").mkdir(parents=True)
    (model_dir / "metis_vc/metis_vc_lora_16.safetensors").write_text("mine")

    fetched = dl.download(model_dir, ["se", "vc"], progress=False, revision="main").fetched

    expected = SHARED | TASK_FILES["se"] | TASK_FILES["vc"]
    mine = "metis_vc/metis_vc_lora_16.safetensors"
    assert {p.relative_to(model_dir).as_posix() for p in fetched} == expected - {mine}
    assert (model_dir / mine).read_text() == "mine"
    w2v_text = (model_dir / "w2v-bert-2.0/model.safetensors").read_text()
    assert w2v_text == "facebook/w2v-bert-2.0:model.safetensors"
    space_path = "models/tts/maskgct/ckpt/wav2vec2bert_stats.pt"
    assert (model_dir / "wav2vec2bert_stats.pt").read_text() == f"amphion/maskgct:{space_path}"
    assert ("space", "amphion/maskgct", space_path) in fake.calls
    assert not list(model_dir.rglob("*" + dl.PARTIAL_SUFFIX))
    hub.check_model_dir(model_dir, ["se", "vc"])

    fake.calls.clear()
    assert dl.download(model_dir, ["se", "vc"], progress=False).fetched == []
    assert fake.calls == []


def test_download_reports_each_failure_and_uses_the_stats_mirror(tmp_path, monkeypatch, no_network, unchecked):
    stats_src = hub.STATS.source
    gated = GatedRepoError("restricted", response=Mock(status_code=401))
    errors = {
        ("facebook/w2v-bert-2.0", "model.safetensors"): gated,
        (stats_src.repo_id, stats_src.filename): EntryNotFoundError("Entry not found"),
    }
    fake = FakeHub(tmp_path / "cache", errors)
    monkeypatch.setattr(dl, "hf_hub_download", fake)

    with pytest.raises(dl.DownloadError) as info:
        dl.download(tmp_path / "m", ["tse"], progress=False, revision="main")

    assert set(info.value.failures) == {"w2v-bert-2.0/model.safetensors"}
    assert "gated repository" in str(info.value)
    assert (tmp_path / "m/wav2vec2bert_stats.pt").read_text() == "IndexTeam/IndexTTS-2:wav2vec2bert_stats.pt"
    assert (tmp_path / "m/metis_tse/metis_tse_lora_32.safetensors").is_file()


def test_download_rejects_a_stats_file_with_the_wrong_hash(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(dl, "hf_hub_download", FakeHub(tmp_path / "cache"))
    with pytest.raises(dl.DownloadError) as info:
        dl.download(tmp_path / "m", ["se"], progress=False, revision="main")  # the stats hash holds on any revision
    assert set(info.value.failures) == {"wav2vec2bert_stats.pt"}
    reasons = info.value.failures["wav2vec2bert_stats.pt"]
    assert sum("wav2vec2bert_stats.pt: size mismatch: expected 9,343 bytes" in r for r in reasons) == 2
    assert not (tmp_path / "m/wav2vec2bert_stats.pt").exists()


def test_connection_failure_stops_network_use_for_later_files(tmp_path, monkeypatch, no_network):
    calls = []

    def unreachable(repo_id, filename, *, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        try:
            raise ConnectionError("DNS lookup failed")
        except ConnectionError as exc:
            raise dl.LocalEntryNotFoundError("cannot find the requested files") from exc

    monkeypatch.setattr(dl, "hf_hub_download", unreachable)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(dl, "hub_unreachable", lambda: None)  # the probe passes; the first download then fails
    with pytest.raises(dl.DownloadError) as info:
        dl.download(tmp_path, ["vc"], progress=False)
    assert calls[0] is False and all(calls[1:])
    assert "DNS lookup failed" in str(info.value)


def test_weight_file_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        hub.STATS.local_path = "x"  # type: ignore[misc]


# ----------------------------------------------------------------------------- verification and pins
def test_verify_file_passes_a_good_file_and_names_a_changed_one(tmp_path):
    good = tmp_path / "weights.bin"
    good.write_bytes(b"\x00\x01metis" * 100)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    expected = Expected(digest, good.stat().st_size)
    assert verify_file(good, expected, "w/weights.bin") == "sha256"
    assert verify_file(good, Expected(size_bytes=good.stat().st_size), "w/weights.bin") == "size only"
    assert verify_file(good, NOTHING_KNOWN, "w/weights.bin") == "unverified"

    changed = tmp_path / "changed.bin"
    data = bytearray(good.read_bytes())
    data[7] ^= 0x01  # one bit of one byte, same size
    changed.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"w/weights.bin: sha256 mismatch: expected " + digest):
        verify_file(changed, expected, "w/weights.bin")

    shorter = tmp_path / "short.bin"
    shorter.write_bytes(bytes(data[:-1]))
    with pytest.raises(IntegrityError, match=r"w/weights.bin: size mismatch: expected 700 bytes, got 699 bytes"):
        verify_file(shorter, expected, "w/weights.bin")


def _pins_for_fake_content(bad: str | None = None):
    """pin_for with published values that match FakeHub's content (or not, for the file `bad`)."""

    def pin_for(repo_id, filename):
        real = hub_pins.pin_for(repo_id, filename)
        if real is None or not real.expected.known:
            return real
        body = FakeHub.content(repo_id, real.filename or filename).encode()
        digest = hashlib.sha256(body + (b"!" if filename == bad else b"")).hexdigest()
        return dataclasses.replace(real, expected=Expected(digest, len(body)))

    return pin_for


def test_download_verifies_against_the_pins_and_reports_unverified_files(tmp_path, monkeypatch, no_network, unchecked):
    monkeypatch.setattr(dl, "hf_hub_download", FakeHub(tmp_path / "cache"))
    monkeypatch.setattr(dl, "pin_for", _pins_for_fake_content())
    report = dl.download(tmp_path / "m", ["tse"], progress=False)
    assert report.checks["metis_tse/metis_tse_lora_32.safetensors"] == "sha256"
    assert report.checks["w2v-bert-2.0/model.safetensors"] == "sha256"
    assert "w2v-bert-2.0/config.json" in report.unverified  # nothing published for it
    assert "metis_base/model.safetensors" in report.unverified
    text = "\n".join(report.lines())
    assert "NOT verified" in text and "metis_base/model.safetensors" in text.split("NOT verified")[1]


def test_download_rejects_a_pinned_file_whose_hash_differs(tmp_path, monkeypatch, no_network, unchecked):
    bad = "metis_tse/metis_tse_lora_32_adapter.safetensors"
    monkeypatch.setattr(dl, "hf_hub_download", FakeHub(tmp_path / "cache"))
    monkeypatch.setattr(dl, "pin_for", _pins_for_fake_content(bad=bad))
    with pytest.raises(dl.DownloadError) as info:
        dl.download(tmp_path / "m", ["tse"], progress=False)
    assert set(info.value.failures) == {bad}
    assert f"{bad}: sha256 mismatch" in str(info.value)
    assert not (tmp_path / "m" / bad).exists()
    assert (tmp_path / "m/metis_tse/metis_tse_lora_32.safetensors").is_file()


def test_download_asks_for_pinned_commits_unless_a_revision_is_given(tmp_path, monkeypatch, no_network, unchecked):
    fake = FakeHub(tmp_path / "cache")
    monkeypatch.setattr(dl, "hf_hub_download", fake)
    monkeypatch.setattr(dl, "verify_file", lambda path, expected, name: "unverified")
    dl.download(tmp_path / "pinned", ["se", "l2s"], progress=False)
    for (repo_id, filename), revision in fake.revisions.items():
        if repo_id in hub_pins.REPO_PINS:
            assert revision is not None and re.fullmatch(r"[0-9a-f]{40}|refs/pr/\d+", revision), (filename, revision)
    assert fake.revisions[(hub_pins.METIS_REPO, "metis_l2s/metis_l2s.safetensors")] == hub_pins.METIS_L2S_COMMIT
    assert fake.revisions[(hub_pins.MASKGCT_REPO, "s2a_model_1layer/model.safetensors")] == (
        hub_pins.MASKGCT_S2A_1LAYER_COMMIT  # the path the file had at the commit whose page shows its hash
    )
    assert (tmp_path / "pinned/s2a_model/s2a_model_1layer/model.safetensors").is_file()

    fake.revisions.clear()
    dl.download(tmp_path / "main", ["se"], progress=False, revision="main")
    official = {k: v for k, v in fake.revisions.items() if k[0] in hub_pins.REPO_PINS}
    assert official and set(official.values()) == {"main"}


def test_every_recorded_value_is_well_formed():
    for (repo_id, _), pin in hub_pins.PINS.items():
        assert repo_id in hub_pins.REPO_PINS
        assert re.fullmatch(r"[0-9a-f]{40}|refs/pr/\d+", pin.revision)
        assert pin.expected.known
        assert pin.expected.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", pin.expected.sha256)
    official = [wf for wf in hub.weight_table() if wf.source.repo_id in hub_pins.REPO_PINS]
    assert all(dl.resolve(wf, wf.source).revision for wf in official)


def test_no_network_is_found_by_one_probe_and_the_cache_alone_is_tried(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    for name in dl.PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    fake = FakeHub(tmp_path / "cache", errors={})

    def cache_only(repo_id, filename, **kwargs):
        fake(repo_id, filename, **kwargs)
        raise dl.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(dl, "hf_hub_download", cache_only)
    with pytest.raises(dl.DownloadError) as info:
        dl.download(tmp_path / "m", ["se"], progress=False)
    assert fake.offline_flags and all(fake.offline_flags)  # not one network attempt after the probe
    assert f"unreachable (no connection to 127.0.0.1:{port} within" in str(info.value)
    assert str(info.value).count("no connection to") == 1  # the cause once, then the files: a summary


def test_probe_passes_when_the_endpoint_answers(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert dl.hub_unreachable() is None
