"""Where each official file is fetched from (repository commit) and what it must be (published sha256 / size).

Every value below was read from a public page, named in the comment beside it; none was computed here (the hub
is not reachable from the machine this table was written on). A file is fetched at the commit whose page shows
its hash, so a recorded hash always belongs to the revision it is fetched at. Files with no published hash that
could be found are fetched at their repository's pinned commit and reported as *unverified*.

``metis-rt download --revision main`` (or any other revision) fetches the official repositories at that
revision instead; the hashes below are then not applied (they belong to the pinned commits), except the stats
file's, which is the same file in every copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from metis_rt.models.verify import NOTHING_KNOWN, Expected

METIS_REPO = "amphion/Metis"
MASKGCT_REPO = "amphion/MaskGCT"
W2V_BERT_REPO = "facebook/w2v-bert-2.0"
MASKGCT_SPACE = "amphion/maskgct"

# amphion/Metis: "Upload 2 files (#4)" on main, https://huggingface.co/amphion/Metis/commit/728f21a8db25cefab649de0c032449a9d177edae
# (parent 23d018d, whose tree page lists metis_base, metis_omni, metis_se and metis_vc; this commit adds metis_tse).
METIS_PIN = "728f21a8db25cefab649de0c032449a9d177edae"
# metis_l2s/ is not in METIS_PIN; it was added by https://huggingface.co/amphion/Metis/commit/8ac8601d65d60b63ed95fccd6f71db61e6c2e17c
METIS_L2S_COMMIT = "8ac8601d65d60b63ed95fccd6f71db61e6c2e17c"
# amphion/MaskGCT: the commit of the page https://huggingface.co/amphion/MaskGCT/blob/46a1964a69da35562b1f0daf5f737bcca65aa8f5/acoustic_codec/model_1.safetensors
# (the acoustic codec as re-uploaded by "Upload 2 files", e3c5700).
MASKGCT_PIN = "46a1964a69da35562b1f0daf5f737bcca65aa8f5"
# The other MaskGCT files at the commits whose file pages show their hashes (pages cited in PINS below):
MASKGCT_SEMANTIC_COMMIT = "630cca57634b477ee7ccfd3baa2c6adc922b93bc"
MASKGCT_S2A_1LAYER_COMMIT = "e171029b03cb279be6e434c4b6d5a36e91a7f3d3"
MASKGCT_S2A_FULL_COMMIT = "ed9869f99303341fbfb08a5f1357ebe29ffff234"
MASKGCT_T2S_REF = "refs/pr/2"  # the page shows no commit id for this file: a ref, made safe by the hash check
# facebook/w2v-bert-2.0: "Update README.md (#14)" on main, after "Upload model (#12)" (6b1c0b3):
# https://huggingface.co/facebook/w2v-bert-2.0/commits/da985ba0987f70aaeb84a80f2851cfac8c697a7b
W2V_BERT_PIN = "da985ba0987f70aaeb84a80f2851cfac8c697a7b"
# Space amphion/maskgct: https://huggingface.co/spaces/amphion/maskgct/tree/36f9ba6b327b27ff7020a769133ed8242ac4d2fb
MASKGCT_SPACE_PIN = "36f9ba6b327b27ff7020a769133ed8242ac4d2fb"


@dataclass(frozen=True)
class Pin:
    """The revision a file is fetched at, the path it has there, and what it must be."""

    revision: str
    filename: str | None = None  # the path inside the repository at `revision`, when it differs from today's
    expected: Expected = NOTHING_KNOWN


# Keyed by (repository, path in the repository today). Missing entries use the repository's pin, unverified.
PINS: dict[tuple[str, str], Pin] = {
    # https://huggingface.co/amphion/Metis/commit/728f21a8db25cefab649de0c032449a9d177edae (the LFS pointers it adds)
    (METIS_REPO, "metis_tse/metis_tse_lora_32.safetensors"): Pin(
        METIS_PIN, expected=Expected("692e8be31601e2ba78c2f4bcefad3abe485d6706e705050f7c62f1465c972ced", 72_382_776)
    ),
    (METIS_REPO, "metis_tse/metis_tse_lora_32_adapter.safetensors"): Pin(
        METIS_PIN, expected=Expected("f0789544b6f5af54eee5863800a5b6fdd6c90d67b2da29d29f02168febd78226", 62_945_788)
    ),
    # https://huggingface.co/amphion/Metis/blob/refs%2Fpr%2F8/metis_se/metis_se_lora_32_adapter.safetensors
    # (last changed by "Upload metis_se_lora_32_adapter.safetensors (#1)", before METIS_PIN)
    (METIS_REPO, "metis_se/metis_se_lora_32_adapter.safetensors"): Pin(
        METIS_PIN, expected=Expected("41aa75e805dc45a0b3d753dceb0bd52eb3861fb521ef80856d265592f82823a8")
    ),
    # https://huggingface.co/amphion/Metis/discussions/3/files ("Upload metis_omni.safetensors", merged before 23d018d)
    (METIS_REPO, "metis_omni/metis_omni.safetensors"): Pin(
        METIS_PIN,
        expected=Expected("ba01b5eabfdc900630401b66537a97dc1e332b1fb5a30ad946eda6904771a77f", 3_048_568_732),
    ),
    # sizes only: the LFS pointer sizes listed in tests/data/spec/keys/README.md (no published hash found)
    (METIS_REPO, "metis_vc/metis_vc_lora_16.safetensors"): Pin(METIS_PIN, expected=Expected(size_bytes=36_206_840)),
    (METIS_REPO, "metis_vc/metis_vc_lora_16_adapter.safetensors"): Pin(
        METIS_PIN, expected=Expected(size_bytes=62_945_788)
    ),
    # https://huggingface.co/amphion/Metis/commit/8ac8601d65d60b63ed95fccd6f71db61e6c2e17c
    (METIS_REPO, "metis_l2s/metis_l2s.safetensors"): Pin(
        METIS_L2S_COMMIT,
        expected=Expected("7e6934617f2183df4e7cf8c960d2a7016f83c033cb30cdac8749abcd138fb916", 2_960_456_992),
    ),
    # https://huggingface.co/amphion/MaskGCT/blob/630cca57634b477ee7ccfd3baa2c6adc922b93bc/semantic_codec/model.safetensors
    (MASKGCT_REPO, "semantic_codec/model.safetensors"): Pin(
        MASKGCT_SEMANTIC_COMMIT,
        expected=Expected("ec947271175d8cad75ec37e83aa487e27c97a0f72a303393772da5ffa84bddf2"),
    ),
    # https://huggingface.co/amphion/MaskGCT/blob/46a1964a69da35562b1f0daf5f737bcca65aa8f5/acoustic_codec/model_1.safetensors
    # (the earlier upload, at e171029b..., had sha256 d42d1835...: the "replaced in place" file)
    (MASKGCT_REPO, "acoustic_codec/model_1.safetensors"): Pin(
        MASKGCT_PIN, expected=Expected("9dbacf8050a4b0d7948eb4224fdc7c61dfe9cb7876d8f32560b93727358256a5")
    ),
    # https://huggingface.co/amphion/MaskGCT/blob/e171029b03cb279be6e434c4b6d5a36e91a7f3d3/s2a_model_1layer/model.safetensors
    (MASKGCT_REPO, "s2a_model/s2a_model_1layer/model.safetensors"): Pin(
        MASKGCT_S2A_1LAYER_COMMIT,
        "s2a_model_1layer/model.safetensors",
        Expected("4d5880e467cb82cac502c6122df2b1242c721c46b8f769161d5f64cf65d9e71c"),
    ),
    # https://huggingface.co/amphion/MaskGCT/blob/ed9869f99303341fbfb08a5f1357ebe29ffff234/s2a_model_full/model.safetensors
    (MASKGCT_REPO, "s2a_model/s2a_model_full/model.safetensors"): Pin(
        MASKGCT_S2A_FULL_COMMIT,
        "s2a_model_full/model.safetensors",
        Expected("27518b0ffae8afdeec8d9b6102868ced38d2a93477eb992d381c188383e78cfa"),
    ),
    # https://huggingface.co/amphion/MaskGCT/blob/refs%2Fpr%2F2/t2s_model/model.safetensors
    (MASKGCT_REPO, "t2s_model/model.safetensors"): Pin(
        MASKGCT_T2S_REF, expected=Expected("543156edd53f533572b751ca2e179c498b51fe96bb8a181e82e31b5ef455230e")
    ),
    # https://huggingface.co/facebook/w2v-bert-2.0/blob/refs%2Fpr%2F23/model.safetensors (last changed by 6b1c0b3,
    # "Upload model (#12)", before W2V_BERT_PIN; ylacombe/w2v-bert-2.0 shows the same sha256)
    (W2V_BERT_REPO, "model.safetensors"): Pin(
        W2V_BERT_PIN, expected=Expected("eb890c9660ed6e3414b6812e27257b8ce5454365d5490d3ad581ea60b93be043")
    ),
}

REPO_PINS = {
    METIS_REPO: METIS_PIN,
    MASKGCT_REPO: MASKGCT_PIN,
    W2V_BERT_REPO: W2V_BERT_PIN,
    MASKGCT_SPACE: MASKGCT_SPACE_PIN,
}


def pin_for(repo_id: str, filename: str) -> Pin | None:
    """The pinned revision (and published values) of one official file; None for a repository we do not pin."""
    if (repo_id, filename) in PINS:
        return PINS[(repo_id, filename)]
    if repo_id in REPO_PINS:
        return Pin(REPO_PINS[repo_id])
    return None
