#!/usr/bin/env bash
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# CPU demo of one bundle, a few minutes on 2 cores:
#   bash ci/demo.sh                          bundles/segmamba_brats (README's main command)
#   bash ci/demo.sh swin_umamba_endoscopy    bundles/swin_umamba_endoscopy
#   bash ci/demo.sh nnmamba_adni             bundles/nnmamba_adni (classification: AUC instead of Dice)
#   bash ci/demo.sh nnmamba_landmark         bundles/nnmamba_landmark (landmarks: mean radial error in mm)
#   bash ci/demo.sh umamba_abdomen_ct        bundles/umamba_abdomen_ct (13 organs: DSC / NSD per organ)
#   1. deterministic synthetic data in the dataset's real layout (generate_brats_phantoms / generate_endovis_phantoms /
#      generate_adni_phantoms / generate_landmark_phantoms / generate_abdomen_ct_phantoms)
#   2. evaluate.yaml on the untrained network (random init, no checkpoint loaded)
#   3. `run training` with a reduced configuration given as command-line overrides (no copy of the configs)
#   4. evaluate.yaml on the trained models/model.pt
# and prints the test-split Dice of both; exits non-zero unless training clearly improved it. For nnmamba_adni it prints
# the test-split ACC / F1 / AUC at the threshold chosen on validation, and fails unless the trained AUC reaches
# DEMO_MIN_AUC (0.75; chance is 0.5). For nnmamba_landmark it prints the test-split MRE per landmark and fails unless
# training at least halved it (DEMO_MAX_MRE_RATIO, 0.5).
# Environment: DEMO_DIR (default demo), DEMO_EPOCHS, DEMO_ITERATIONS (3 x 10 for SegMamba, 8 x 20 for Swin-UMamba,
# 10 epochs over the training split for the nnMamba classifier, 30 for the landmark network, 20 x 20 for U-Mamba),
# DEMO_MIN_GAIN (0.15),
# DEMO_MIN_AUC (0.75), DEMO_MAX_MRE_RATIO (0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-segmamba_brats}
case "$BUNDLE" in
    segmamba_brats|swin_umamba_endoscopy|nnmamba_adni|nnmamba_landmark|umamba_abdomen_ct) ;;
    *) echo "usage: bash ci/demo.sh [segmamba_brats|swin_umamba_endoscopy|nnmamba_adni|nnmamba_landmark|umamba_abdomen_ct]" \
            "(got '$BUNDLE')" >&2
       exit 2 ;;
esac
start=$SECONDS
log() { echo "[demo $(printf '%4d' $((SECONDS - start)))s] $*"; }
# step LOG PATTERN COMMAND...: runs COMMAND showing the lines that match PATTERN as they come; full output in LOG
step() {
    local logfile=$1 pattern=$2
    shift 2
    set +e
    "$@" 2>&1 | tee "$logfile" | grep -E --line-buffered "$pattern"
    local status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        log "FAILED (exit $status), last lines of $logfile:"
        tail -n 40 "$logfile"
        exit "$status"
    fi
}

bash ci/setup.sh
PY=$PWD/.venv/bin/python
DEMO_DIR=$(mkdir -p "${DEMO_DIR:-demo}" && cd "${DEMO_DIR:-demo}" && pwd)
ROOT=$DEMO_DIR/$BUNDLE
MIN_GAIN=${DEMO_MIN_GAIN:-0.15}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rm -rf "$ROOT"
mkdir -p "$ROOT/logs"

if [ "$BUNDLE" = segmamba_brats ]; then
    DATA=$DEMO_DIR/data
    EPOCHS=${DEMO_EPOCHS:-3}
    ITERATIONS=${DEMO_ITERATIONS:-10}
    log "writing 12 phantom BraTS cases (48^3) to $DATA"
    rm -rf "$DATA"
    "$PY" -c "from shared_networks.data import generate_brats_phantoms as g; g('$DATA', num_cases=12, shape=(48, 48, 48), seed=0)"
    # the reduced configuration: 32^3 patches, SegMamba with widths (8, 16, 32, 64) and a 64-wide bottleneck
    REDUCED=(--bundle_root "$ROOT" --dataset_dir "$DATA" --patch_size "[32,32,32]"
             --network_def#feature_sizes "[8,16,32,64]" --network_def#hidden_size 64
             --batch_size 2 --num_workers 0 --sw_batch_size 2)
    TRAIN_EXTRA=()
elif [ "$BUNDLE" = nnmamba_adni ]; then
    DATA=$DEMO_DIR/data_adni
    EPOCHS=${DEMO_EPOCHS:-10}
    log "writing 80 synthetic T1 brains (40 NC, 40 AD; 40x48x40 at 4 mm, the release's class-folder layout) to $DATA"
    rm -rf "$DATA"
    "$PY" -c "from shared_networks.data import generate_adni_phantoms as g; g('$DATA', num_cases=80, shape=(40, 48, 40), spacing=4.0, seed=0)"
    # the reduced configuration: 4 mm volumes, a 16-wide classifier with one block per stage, 60/20/20 split; the
    # release's optimiser, loss and batch size unchanged
    REDUCED=(--bundle_root "$ROOT" --dataset_dir "$DATA" --spatial_size "[40,48,40]" --pixdim "[4.0,4.0,4.0]"
             --network_def#feature_size 16 --network_def#blocks 1 --split_fractions "[0.6,0.2,0.2]"
             --num_workers 0 --cache_rate 1.0)
    TRAIN_EXTRA=()
elif [ "$BUNDLE" = nnmamba_landmark ]; then
    DATA=$DEMO_DIR/data_landmarks
    EPOCHS=${DEMO_EPOCHS:-30}
    log "writing 24 synthetic volumes (32^3 at 1.5 mm) with 6 landmarks each (images/ + landmarks.json) to $DATA"
    rm -rf "$DATA"
    "$PY" -c "from shared_networks.data import generate_landmark_phantoms as g; g('$DATA', num_cases=24, shape=(32, 32, 32), spacing=1.5, seed=0)"
    # the reduced configuration: volumes resized to 32^3, heatmaps of sigma 2 voxels, a 16-wide nnMambaSeg with one
    # block per stage, a 2-epoch warm-up; the release's loss, optimiser and batch size unchanged
    REDUCED=(--bundle_root "$ROOT" --dataset_dir "$DATA" --spatial_size "[32,32,32]" --heatmap_sigma 2.0
             --network_def#feature_size 16 --network_def#blocks 1 --num_workers 0 --cache_rate 1.0)
    TRAIN_EXTRA=(--warmup_epochs 2)
elif [ "$BUNDLE" = umamba_abdomen_ct ]; then
    # named as the dataset the shipped plan (plans/nnUNetPlans.json) was made for, so the plan check stays on
    DATA=$DEMO_DIR/nnUNet_raw/Dataset901_AbdomenCTPhantom
    EPOCHS=${DEMO_EPOCHS:-20}
    ITERATIONS=${DEMO_ITERATIONS:-20}
    log "writing 16 synthetic abdomen CT volumes (64x64x32, 1.5x1.5x3 mm, 13 FLARE22 organs; 12 imagesTr, 4 imagesTs) to $DATA"
    rm -rf "$DATA"
    "$PY" -c "from shared_networks.data import generate_abdomen_ct_phantoms as g; g('$DATA', num_cases=12, num_test_cases=4, shape=(64, 64, 32), seed=0)"
    # the reduced configuration: the shipped plan (32x64x64 patches, batch 2, its normalisation) with U-Mamba_Bot
    # 8 ... 64 wide; AdamW at 3e-3 instead of nnU-Net's SGD (momentum 0.99), which on 13 organs needs far more than a
    # few hundred iterations to leave the all-background start (400 of them: test Dice 0.000)
    REDUCED=(--bundle_root "$ROOT" --dataset_dir "$DATA" --plans_path "$PWD/bundles/$BUNDLE/plans/nnUNetPlans.json"
             --network_def#features_per_stage "[8,16,32,64,64]" --num_workers 0 --cache_rate 1.0 --sw_batch_size 2)
    TRAIN_EXTRA=(--optimizer '$torch.optim.AdamW(@network.parameters(), lr=3e-3, weight_decay=1e-5)')
else
    DATA=$DEMO_DIR/data_endovis
    EPOCHS=${DEMO_EPOCHS:-8}
    ITERATIONS=${DEMO_ITERATIONS:-20}
    log "writing 48 synthetic EndoVis 2017 frames (6 videos, 96x128, challenge layout) to $DATA"
    rm -rf "$DATA"
    "$PY" -c "from shared_networks.data import generate_endovis_phantoms as g; g('$DATA', num_videos=6, frames_per_video=8, shape=(96, 128), seed=0)"
    # the reduced configuration: whole 96x128 frames, Swin-UMamba with a 16-wide stem and one VSS block per stage,
    # from scratch, at 10x the release's learning rate so that a few CPU minutes show learning
    REDUCED=(--bundle_root "$ROOT" --dataset_dir "$DATA" --patch_size "[96,128]"
             --network_def#feature_size 16 --network_def#depths "[1,1,1,1]" --network_def#drop_path_rate 0
             --batch_size 4 --num_workers 0 --sw_batch_size 2)
    TRAIN_EXTRA=(--learning_rate 1e-3)
fi

cd "bundles/$BUNDLE"
EVALUATE=(run --config_file "['configs/train.yaml','configs/evaluate.yaml']")

log "evaluating the untrained network on the testing split"
step "$ROOT/logs/evaluate_untrained.log" "Validated|Wrote datalist|Metrics|val_mean|val_mre:|testing \(" \
    "$PY" -m monai.bundle "${EVALUATE[@]}" "${REDUCED[@]}" --output_dir "$ROOT/eval_untrained" \
    --validate#handlers#0#_disabled_ true

if [ "$BUNDLE" = nnmamba_adni ] || [ "$BUNDLE" = nnmamba_landmark ]; then
    log "training: $EPOCHS epochs over the training split (python -m monai.bundle run training ...)"
    step "$ROOT/logs/train.log" "Epoch\[[0-9]+\] Metrics" \
        "$PY" -m monai.bundle run training --config_file configs/train.yaml "${REDUCED[@]}" ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"} \
        --epochs "$EPOCHS" --val_interval 1
else
    log "training: $EPOCHS epochs x $ITERATIONS iterations (python -m monai.bundle run training ...)"
    step "$ROOT/logs/train.log" "Iter: [0-9]+/$ITERATIONS -- |Epoch\[[0-9]+\] Metrics" \
        "$PY" -m monai.bundle run training --config_file configs/train.yaml "${REDUCED[@]}" ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"} \
        --epochs "$EPOCHS" --iterations_per_epoch "$ITERATIONS" --val_interval 1
fi

log "evaluating the trained models/model.pt on the testing split"
step "$ROOT/logs/evaluate_trained.log" "Restored|Metrics|val_mean|val_mre:|testing \(" \
    "$PY" -m monai.bundle "${EVALUATE[@]}" "${REDUCED[@]}" --output_dir "$ROOT/eval_trained"

log "done in $((SECONDS - start)) s; outputs in $ROOT"
if [ "$BUNDLE" = nnmamba_adni ]; then
    "$PY" - "$ROOT" "${DEMO_MIN_AUC:-0.75}" <<'EOF'
import json
import sys

root, min_auc = sys.argv[1], float(sys.argv[2])
summaries = {name: json.load(open(f"{root}/eval_{name}/summary.json")) for name in ("untrained", "trained")}
print(f"{'test split':<18}{'ACC':>8}{'F1':>8}{'AUC':>8}{'threshold':>11}   (threshold: Youden's J on validation)")
for name, summary in summaries.items():
    m = summary["testing"]
    cells = [m["accuracy"], m["f1"], m["auc"]]
    print(f"{name:<18}" + "".join(f"{'n/a' if v is None else format(v, '.3f'):>8}" for v in cells)
          + f"{summary['threshold']:>11.3f}")
auc = summaries["trained"]["testing"]["auc"]
if auc is None or not auc >= min_auc:
    sys.exit(f"FAIL: the trained test AUC is {auc}, expected at least {min_auc} (chance: 0.5).")
print(f"OK: the trained test AUC is {auc:.3f} (required: {min_auc}; chance: 0.5).")
EOF
    exit 0
fi
if [ "$BUNDLE" = nnmamba_landmark ]; then
    "$PY" - "$ROOT" "${DEMO_MAX_MRE_RATIO:-0.5}" <<'EOF'
import json
import sys

root, max_ratio = sys.argv[1], float(sys.argv[2])
metrics = {name: json.load(open(f"{root}/eval_{name}/metrics_summary.json"))["metrics"]
           for name in ("untrained", "trained")}
names = list(metrics["trained"]["val_radial_error"])
print(f"{'test split, mm':<18}" + "".join(f"{n:>8}" for n in names) + f"{'MRE':>8}")
for label, m in metrics.items():
    print(f"{label:<18}" + "".join(f"{m['val_radial_error'][n]:>8.2f}" for n in names) + f"{m['val_mre']:>8.2f}")
ratio = metrics["trained"]["val_mre"] / metrics["untrained"]["val_mre"]
if not ratio <= max_ratio:
    sys.exit(f"FAIL: training brought the MRE to {ratio:.2f} x the untrained one, expected at most {max_ratio}.")
print(f"OK: training brought the MRE to {ratio:.2f} x the untrained one (required: at most {max_ratio}).")
EOF
    exit 0
fi
if [ "$BUNDLE" = umamba_abdomen_ct ]; then
    "$PY" - "$ROOT" "$MIN_GAIN" <<'EOF'
import json
import sys

root, min_gain = sys.argv[1], float(sys.argv[2])
metrics = {name: json.load(open(f"{root}/eval_{name}/metrics_summary.json"))["metrics"]
           for name in ("untrained", "trained")}


def cell(value):
    return f"{'n/a' if value is None else format(value, '.3f'):>11}"


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


print(f"{'test split':<22}{'DSC before':>11}{'DSC after':>11}{'NSD before':>11}{'NSD after':>11}")
for organ in metrics["trained"]["organ_dice"]:
    print(f"{organ:<22}" + "".join(cell(metrics[n][m][organ]) for m in ("organ_dice", "organ_nsd")
                                   for n in ("untrained", "trained")))
print(f"{'mean':<22}" + "".join(cell(mean(metrics[n][m].values())) for m in ("organ_dice", "organ_nsd")
                               for n in ("untrained", "trained")))
gain = mean(metrics["trained"]["organ_dice"].values()) - mean(metrics["untrained"]["organ_dice"].values())
if not gain >= min_gain:
    sys.exit(f"FAIL: training raised the mean DSC over the 13 organs by {gain:.3f}, expected at least {min_gain}.")
print(f"OK: training raised the mean DSC over the 13 organs by {gain:.3f} (required: {min_gain}).")
EOF
    exit 0
fi
"$PY" - "$ROOT" "$MIN_GAIN" <<'EOF'
import json
import sys

root, min_gain = sys.argv[1], float(sys.argv[2])
untrained, trained = (json.load(open(f"{root}/{name}/metrics_summary.json"))["metrics"] for name in ("eval_untrained", "eval_trained"))
if "val_dice" in trained:  # SegMamba: Dice per region
    columns = [("TC", lambda m: m["val_dice"]["TC"]), ("WT", lambda m: m["val_dice"]["WT"]),
               ("ET", lambda m: m["val_dice"]["ET"]), ("mean", lambda m: m["val_mean_dice"])]
else:  # Swin-UMamba: DSC and NSD over the instruments present in each frame
    columns = [("DSC", lambda m: m["val_mean_dice"]), ("NSD", lambda m: m["val_mean_nsd"])]
print(f"{'test split':<18}" + "".join(f"{name:>8}" for name, _ in columns))
for label, metrics in (("untrained", untrained), ("trained", trained)):
    row = [value(metrics) for _, value in columns]
    print(f"{label:<18}" + "".join(f"{'n/a' if v is None else format(v, '.3f'):>8}" for v in row))
gain = trained["val_mean_dice"] - untrained["val_mean_dice"]
if not gain >= min_gain:
    sys.exit(f"FAIL: training raised the mean Dice by {gain:.3f}, expected at least {min_gain}.")
print(f"OK: training raised the mean Dice by {gain:.3f} (required: {min_gain}).")
EOF
