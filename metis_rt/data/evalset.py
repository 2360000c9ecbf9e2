"""The evaluation set builder: sources checked, plan made, items rendered, ``manifest.json`` written.

Deterministic: the same seed gives byte-identical files and manifest (no timestamps, everything sorted,
every random draw named, see `seeding.py`). The quick set is a subset of the full set's items, and its
files are byte-identical to the same items of a full build with the same seed.

Split: an item is ``"heldout"`` when any speaker in it (target, interferer, VC reference) is one of
`HELDOUT_SPEAKERS`; training must never use those speakers' recordings at all. Every other item is
``"test"``: its speakers may appear in training, but never the source files listed under ``utterances``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from metis_rt.data.catalog import HELDOUT_SPEAKERS, SOURCES
from metis_rt.data.mixing import PEAK_LIMIT, SPEECH_LEVEL_DBFS
from metis_rt.data.plan import Plan, make_plan, quick_subset
from metis_rt.data.render import SUBTYPE, Renderer
from metis_rt.data.sources import SAMPLE_RATE, check_sources, require_g722_decoder
from metis_rt.errors import MetisError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
HELDOUT_RULE = (
    "items with a held-out speaker (target, interferer or VC reference) are 'heldout'; training must never "
    "use any recording of a held-out speaker, nor any source file listed under 'utterances'"
)


class EvalSetError(MetisError):
    """The evaluation set cannot be written where it was asked to be."""


def build_eval_set(
    out_dir: Path, seed: int = 0, quick: bool = False, progress: bool = True, *, root: Path = Path("/")
) -> dict:
    """Build the evaluation set under `out_dir` and return its manifest (also written to manifest.json).

    `quick` builds a dozen items in seconds instead of 234 in a minute or two. `root` is the filesystem root
    the Debian packages are looked for under. Raises `SourceError` naming the packages to install.
    """
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    records = check_sources([s.name for s in SOURCES], root)
    require_g722_decoder()
    out_dir = Path(out_dir)
    _prepare(out_dir)
    plan = make_plan(seed)
    if quick:
        plan = quick_subset(plan)
    renderer = Renderer(out_dir, seed, root)
    items = _render(renderer, plan, progress)
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "quick": quick,
        "sample_rate": SAMPLE_RATE,
        "format": f"WAV mono {SUBTYPE}",
        "speech_level_dbfs": SPEECH_LEVEL_DBFS,
        "peak_limit": PEAK_LIMIT,
        "sources": [r.to_json() for r in records],
        "heldout": {"speakers": sorted(HELDOUT_SPEAKERS), "rule": HELDOUT_RULE},
        "utterances": _utterance_entries(renderer),
        "items": sorted(items, key=lambda item: item["id"]),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("evaluation set: %d items written to %s", len(items), out_dir)
    return manifest


def _render(renderer: Renderer, plan: Plan, progress: bool) -> list[dict]:
    total = sum(2 * len(s.snrs_db) for s in plan.se) + len(plan.tse) + len(plan.vc)
    items: list[dict] = []
    with tqdm(total=total, disable=not progress, desc="evaluation set", unit="item") as bar:
        for scene in plan.se:
            items += renderer.se_scene(scene)
            bar.update(2 * len(scene.snrs_db))
        for task, render in ((plan.tse, renderer.tse), (plan.vc, renderer.vc)):
            for item in task:
                items.append(render(item))
                bar.update(1)
    return items


def _utterance_entries(renderer: Renderer) -> list[dict]:
    return [
        {
            "id": utt.id,
            "voice": utt.voice,
            "speaker": utt.speaker,
            "language": utt.language,
            "duration_s": round(utt.duration_s, 4),
            "path": renderer.written.get(utt.id),
            "files": list(utt.files),
        }
        for utt in sorted(renderer.used.values(), key=lambda u: u.id)
    ]


def _prepare(out_dir: Path) -> None:
    """Create `out_dir`, or clear the files of the previous build in it; refuse a foreign non-empty folder."""
    manifest_path = out_dir / MANIFEST_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalSetError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not manifest_path.is_file():
        raise EvalSetError(
            f"{out_dir} is not empty and holds no {MANIFEST_NAME} of an earlier build; "
            "choose a new or empty directory, or delete this one if an interrupted build left it (nothing was written)"
        )
    if manifest_path.is_file():
        _remove_previous(out_dir, manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)


def _remove_previous(out_dir: Path, manifest_path: Path) -> None:
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalSetError(f"cannot read the earlier {manifest_path}: {exc}; remove {out_dir} by hand") from exc
    listed = {item.get(key) for item in previous.get("items", []) for key in ("input", "clean", "enrollment")}
    listed |= {utt.get("path") for utt in previous.get("utterances", [])}
    base = out_dir.resolve()
    for relative in sorted(p for p in listed if p):
        path = (out_dir / relative).resolve()
        if path.is_relative_to(base) and path.is_file():
            path.unlink()
    manifest_path.unlink()
