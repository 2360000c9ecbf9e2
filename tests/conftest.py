"""Shared test fixtures. The reference vectors and key dumps live in ``tests/data`` (see its README).

``METIS_RT_PARITY_DIR`` points the tests at another vector set of the same format (e.g. one with other seeds and
tiny sizes); nothing in the tests is tied to the sizes of the bundled set.
"""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub call must fail fast, never hang
if "METIS_RT_CACHE_DIR" not in os.environ:  # measured thread plans: one folder per test run, shared by subprocesses
    os.environ["METIS_RT_CACHE_DIR"] = tempfile.mkdtemp(prefix="metis-rt-test-cache-")

REPO_DIR = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_DIR / "tests" / "data"
PARITY_DIR = Path(os.environ.get("METIS_RT_PARITY_DIR") or DATA_DIR / "parity").resolve()
SPEC_KEYS_DIR = DATA_DIR / "spec" / "keys"
EXAMPLES_DIR = REPO_DIR / "examples"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY_DIR.is_dir():
        pytest.fail(f"reference vectors not found at {PARITY_DIR} (tests/data/parity, or $METIS_RT_PARITY_DIR)")
    return PARITY_DIR


# ----------------------------------------------------------------------------- checkpoint layouts
# (test_spec_keys, test_checkpoints, test_lora)
def read_key_dump(name: str) -> dict[str, tuple[int, ...]]:
    """Parse a key dump of ``SPEC_KEYS_DIR``: ``key<TAB>[shape]`` with an optional ``<TAB>dtype`` column.

    Lines starting with ``#`` are comments (file counts, notes).
    """
    layout = {}
    for line in (SPEC_KEYS_DIR / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, *_dtype = line.split("\t")
        dims = shape.strip("[]").replace(" ", "")
        layout[key] = tuple(int(d) for d in dims.split(",")) if dims else ()
    return layout


def write_stage1_task_files(model, root: Path, variant: str, cfg, drop=frozenset()) -> dict[str, Path]:
    """Save an unmerged stage-1 task model (LoRA injected) as the official base / adapter / LoRA files.

    Names follow the released files: base tensors without ``.base_layer.``, adapter and LoRA tensors with the
    ``model.`` prefix of the peft dumps. File-level names in ``drop`` are left out. Returns the three paths.
    """
    from safetensors.torch import save_file

    from metis_rt.models.stage1_loading import stage1_files

    files = stage1_files(variant, cfg)
    split = {"main": {}, "adapter": {}, "lora": {}}
    for key, tensor in model.state_dict().items():
        if key.startswith("cond_adapter."):
            part, name = "adapter", "model." + key
        elif ".lora_A." in key or ".lora_B." in key:
            part, name = "lora", "model." + key
        else:
            part, name = "main", key.replace(".base_layer.", ".")
        if name not in drop:
            split[part][name] = tensor.detach().clone().contiguous()
    paths = {}
    for part, state in split.items():
        paths[part] = Path(root) / getattr(files, part)
        paths[part].parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(paths[part]))
    return paths


# ----------------------------------------------------------------------------- a tiny model dir with every task
def make_combined_model_dir(root: Path) -> Path:
    """The shared components and SE model of parity/se, TSE's LoRA pair from parity/tse (same r=4, alpha=8), a
    random VC LoRA pair with the same rank, the T2S (TTS) and Omni checkpoints of parity/tts and parity/omni (same
    stage-1 sizes), and a random L2S checkpoint whose visual width is this config's cond_dim: one model directory
    serving se, tse, vc, tts, l2s and omni (the official layout)."""
    import torch
    from safetensors.torch import save_file

    from metis_rt.models.stage1_loading import expected_file_layouts
    from metis_rt.pipeline.components import resolve_config

    se = PARITY_DIR / "se"
    root.mkdir(parents=True, exist_ok=True)
    for item in se.iterdir():
        if item.name != "cases":
            (root / item.name).symlink_to(item)
    (root / "metis_tse").symlink_to(PARITY_DIR / "tse" / "metis_tse")
    (root / "t2s_model").symlink_to(PARITY_DIR / "tts" / "t2s_model")
    (root / "metis_omni").symlink_to(PARITY_DIR / "omni" / "metis_omni")
    generator = torch.Generator().manual_seed(0)
    for variant, folder in (("vc", "metis_vc/"), ("l2s", "metis_l2s/")):
        cfg, _ = resolve_config(root, variant)
        for name, layout in expected_file_layouts(variant, cfg).items():
            if name.startswith(folder):
                tensors = {k: 0.05 * torch.randn(shape, generator=generator) for k, shape in layout.items()}
                (root / name).parent.mkdir(exist_ok=True)
                save_file(tensors, str(root / name))
    return root


@pytest.fixture(scope="session")
def combined_model_dir(tmp_path_factory, parity_dir) -> Path:
    return make_combined_model_dir(tmp_path_factory.mktemp("models") / "tiny")


# --- long torch.compile checks (issue 20): minutes on a shared 2-core CPU, so opt-in -----------------------------
def pytest_addoption(parser):
    parser.addoption(
        "--compile-checks", action="store_true", help="also run the long torch.compile checks (marked compile_long)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--compile-checks"):
        return
    skip = pytest.mark.skip(reason="long torch.compile check: run with --compile-checks")
    for item in items:
        if "compile_long" in item.keywords:
            item.add_marker(skip)
