"""From-scratch pre-training of every Metis component at small size, each exported in the official layout.

| trainer (``trainer:``)      | module             | options naming earlier exports | exports                  |
|-----------------------------|--------------------|--------------------------------|--------------------------|
| ``pretrain-ssl``            | ``ssl``            | -                              | w2v-bert-2.0/, stats     |
| ``pretrain-semantic-codec`` | ``semantic_codec`` | ssl_dir                        | semantic_codec/          |
| ``pretrain-acoustic-codec`` | ``acoustic_codec`` | -                              | acoustic_codec/          |
| ``pretrain-base``           | ``base``           | ssl_dir, semantic_codec_dir    | metis_base/              |
| ``pretrain-s2a``            | ``s2a``            | + acoustic_codec_dir           | s2a_model/{1layer,full}/ |

Each module has ``build(options, run) -> TrainTask`` (the contract of :mod:`metis_rt.train.registry`); every export
also merges its sizes into ``<out_dir>/config.json`` (:mod:`config_json`).
"""

TRAINER_MODULES = {
    "pretrain-ssl": "metis_rt.train.pretrain.ssl",
    "pretrain-semantic-codec": "metis_rt.train.pretrain.semantic_codec",
    "pretrain-acoustic-codec": "metis_rt.train.pretrain.acoustic_codec",
    "pretrain-base": "metis_rt.train.pretrain.base",
    "pretrain-s2a": "metis_rt.train.pretrain.s2a",
}
