#!/usr/bin/env bash
# The whole training chain at small size, end to end: training speech -> SSL encoder -> semantic codec ->
# acoustic codec -> Metis base -> S2A -> one model directory -> SE adapter fine-tuning (before = step 0,
# after = the trained adapter) -> the evaluation harness on both.
#
#   bash bench/train_small_chain.sh                 # short CPU run (about 70 min on 2 cores)
#   STEPS_SCALE=20 DEVICE=cuda bash bench/train_small_chain.sh   # 20x the steps on a GPU
#   SIZE=compact OUT=out/compact bash bench/train_small_chain.sh   # the compact CPU-streaming sizes (issue 8)
#
# Knobs (environment): SSL_STEPS SEM_STEPS AC_STEPS BASE_STEPS S2A_STEPS SE_STEPS (before STEPS_SCALE; defaults
# 300 300 600 300 150 300), GATE_INIT (the SE adapter's starting gate, official 0.0), SE_STREAM=0 (skip the
# streaming-window fine-tuning), EVAL=0 (stop after training), MINUTES (training speech), EVAL_SET, EVAL_ITEMS.
# The compact run of bench/RESULTS.md and docs/models.md:
#   SIZE=compact OUT=out/compact SSL_STEPS=400 SEM_STEPS=300 AC_STEPS=1000 BASE_STEPS=300 S2A_STEPS=200 \
#     SE_STEPS=300 SE_STREAM=0 EVAL=0 GATE_INIT=1.0 bash bench/train_small_chain.sh
#
# Outputs under $OUT (default out/chain): data/, runs/<name>/ (losses.csv, loss_curve.png, export/), models/small,
# models/small_se_before, models/small_se_after, eval_before/, eval_after/ (report.md, clips.csv, plots).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
OUT=${OUT:-out/chain}
DEVICE=${DEVICE:-cpu}
SCALE=${STEPS_SCALE:-1}
MINUTES=${MINUTES:-30}
EVAL_SET=${EVAL_SET:-$OUT/evalset}  # an existing `metis-rt data build-eval --seed 0` folder saves a build
M=${METIS_RT:-.venv/bin/metis-rt}
PY=${PYTHON:-.venv/bin/python}
common="loop.device=$DEVICE loop.progress=false loop.log_every=10"
# Sizes: "small" = the run files' example sizes; "compact" = sized for CPU streaming from bench/cpu_profile.py
# (bench/RESULTS.md, issue 8): a 4-layer SSL encoder, 4 acoustic codebooks (4 sequential S2A forwards per hop, not
# 12), 3-layer S2A models, a 4-layer stage 1.
SIZE=${SIZE:-small}
case $SIZE in
  small) ssl_size="" sem_size="" ac_size="" base_size="" s2a_size="" ;;
  compact)
    ssl_size="options.model.hidden_size=128 options.model.num_layers=4 options.model.intermediate_size=512 \
      options.hidden_state_index=4"
    sem_size="options.vocos_dim=128 options.vocos_intermediate_dim=384 options.vocos_num_layers=2"
    ac_size="options.decoder.num_quantizers=4 options.decoder.codebook_size=512 options.decoder.vocos_dim=192 \
      options.decoder.vocos_intermediate_dim=576 options.decoder.vocos_num_layers=4"
    base_size="options.model.hidden_size=256 options.model.num_layers=4"
    s2a_size="options.model_1layer.hidden_size=192 options.model_1layer.num_layers=3 \
      options.model_full.hidden_size=192 options.model_full.num_layers=3"
    ;;
  *) echo "SIZE must be small or compact, not $SIZE" >&2; exit 2 ;;
esac

steps() { echo $(( $1 * SCALE )); }
run() {  # run NAME CONFIG STEPS [overrides...]
  local name=$1 config=$2 n=$3; shift 3
  local every=$(( n / 4 > 0 ? n / 4 : 1 ))
  if [ -e "$OUT/runs/$name/.done" ]; then echo "== $name: done earlier, skipped"; return; fi
  echo "== $name: $n steps"
  # warmup = a tenth of the run (the run files' warmups, 500-2000 steps, are sized for long runs: left as they are,
  # a short run never leaves the warmup; the second CPU run did exactly that, see bench/RESULTS.md)
  /usr/bin/time -f "$name: %e s wall" "$M" train "$config" out_dir="$OUT/runs/$name" loop.steps="$n" \
    loop.warmup_steps=$(( n / 10 )) loop.valid_every=$every loop.checkpoint_every=$every data.set_dir="$OUT/data" \
    $common "$@"
  touch "$OUT/runs/$name/.done"
}

[ -f "$OUT/data/manifest.json" ] || "$M" data build-train --out "$OUT/data" --minutes "$MINUTES" --seed 0 --no-progress
# SSL: denoising masked prediction (input = degraded speech, targets = clusters of the clean speech). Semantic codec:
# 256 codes (1024 codes on features this young hashed the noise: 1 % clean/noisy token agreement, RESULTS.md).
# shellcheck disable=SC2086  # the size overrides are word lists
run ssl configs/train/pretrain_ssl.yaml "$(steps ${SSL_STEPS:-300})" options.denoising=true data.task=se $ssl_size
# shellcheck disable=SC2086
run semantic_codec configs/train/pretrain_semantic_codec.yaml "$(steps ${SEM_STEPS:-300})" \
  options.ssl_dir="$OUT/runs/ssl/export" options.codebook_size=256 $sem_size
# shellcheck disable=SC2086
# Frequent dead-code revival, no quantiser dropout, lr 3e-4: with the run file's settings layer-0 use collapsed to 1-2
# codes within 20 steps; with these it climbs to 20 % of the codebook per batch by step 200 (RESULTS.md, issue 8).
run acoustic_codec configs/train/pretrain_acoustic_codec.yaml "$(steps ${AC_STEPS:-600})" options.revive_every=10 \
  options.quantizer_dropout=0.0 loop.lr=3.0e-4 $ac_size
# shellcheck disable=SC2086
run base configs/train/pretrain_base.yaml "$(steps ${BASE_STEPS:-300})" options.ssl_dir="$OUT/runs/ssl/export" \
  options.semantic_codec_dir="$OUT/runs/semantic_codec/export" $base_size
# shellcheck disable=SC2086
run s2a configs/train/pretrain_s2a.yaml "$(steps ${S2A_STEPS:-150})" options.ssl_dir="$OUT/runs/ssl/export" \
  options.semantic_codec_dir="$OUT/runs/semantic_codec/export" options.acoustic_codec_dir="$OUT/runs/acoustic_codec/export" \
  $s2a_size

"$PY" - "$OUT" <<'EOF'
import sys
from pathlib import Path
from metis_rt.train.pretrain.config_json import assemble_model_dir
out = Path(sys.argv[1])
parts = [out / "runs" / name / "export" for name in ("ssl", "semantic_codec", "acoustic_codec", "base", "s2a")]
print("model dir:", assemble_model_dir(parts, out / "models" / "small"))
EOF
# the compact sizes' own decoding and streaming settings (4 codebooks, no S2A guidance, short context)
if [ "$SIZE" = compact ]; then cp configs/models/compact.yaml "$OUT/models/small/metis-rt.yaml"; fi

# SE adapter: "before" = the untrained adapter (one step at lr 1e-12: zero gate, LoRA B = 0, i.e. the base model),
# "after" = fine-tuned on whole utterances, "stream" = fine-tuned on streaming windows (chunk 240 / lookahead 160).
# Small LoRA (r 8) and 4 s crops for the small base; the two fine-tunings run side by side, one thread each.
ft="options.model_dir=$OUT/models/small options.lora_r=8 options.lora_alpha=16 options.max_frames=200 loop.batch_size=8 loop.grad_accum=1"
# GATE_INIT=1.0 starts the condition adapter's gate open (the official 0 barely opened in 300 CPU steps, RESULTS.md)
ft="$ft options.gate_init=${GATE_INIT:-0.0}"
run se_before configs/train/finetune_se.yaml 1 $ft loop.lr=1.0e-12 loop.warmup_steps=0
if [ "${SE_STREAM:-1}" = 1 ]; then
  OMP_NUM_THREADS=1 run se_after configs/train/finetune_se.yaml "$(steps ${SE_STEPS:-300})" $ft loop.lr=1.0e-3 loop.warmup_steps=30 &
  OMP_NUM_THREADS=1 run se_stream configs/train/finetune_se_streaming.yaml "$(steps ${SE_STEPS:-300})" $ft loop.lr=1.0e-3 \
    loop.warmup_steps=30 &
  wait
else  # only the plain fine-tuning, on both threads
  run se_after configs/train/finetune_se.yaml "$(steps ${SE_STEPS:-300})" $ft loop.lr=1.0e-3 loop.warmup_steps=30
fi
[ "${EVAL:-1}" = 1 ] || { echo "done (no evaluation): $OUT/runs/se_after/export"; exit 0; }

[ -f "$EVAL_SET/manifest.json" ] || "$M" data build-eval --out "$EVAL_SET" --seed 0
METRICS=pesq,stoi,si_sdr,speaker_sim,dnsmos_sig,dnsmos_bak,dnsmos_ovrl
for which in before after $([ "${SE_STREAM:-1}" = 1 ] && echo stream); do
  "$M" eval --set "$EVAL_SET" --per-task "${EVAL_ITEMS:-12}" --metrics "$METRICS" --tasks se \
    --systems unprocessed,metis-offline,metis-stream-240-160 \
    --model-dir "$OUT/runs/se_$which/export" --out "$OUT/eval_$which" --no-progress
done
echo "done: $OUT/eval_{before,after,stream}/report.md"
