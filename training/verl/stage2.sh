#!/usr/bin/env bash
# PaCoRe stage 2: continue from the stage-1 policy on the stage-2 set, with the same settings.
#
#   MODEL=ckpt/stage1-actor-hf TRAIN_FILE=data/stage2.jsonl bash training/verl/stage2.sh [more overrides]
#
# MODEL is the stage-1 actor merged to Hugging Face format (python -m verl.model_merger merge, see
# README.md); TRAIN_FILE the stage-2 set (python -m training.verl.stage2_filter writes it). Every
# item draws |M| ~ U(16, 24) of its problem's cached messages afresh (training.verl.dataset) and is
# scored on C(response) (training.verl.reward): binary for math, pass rate for code.
# The paper's settings: GAE with gamma = lambda = 1, 16 problems x 64 responses per step, actor lr 2e-6,
# critic lr 5e-6, one PPO epoch over the whole batch (one update per step: strictly on-policy), no KL,
# no entropy bonus, temperature = top_p = 1. Lengths and parallelism are this machine's choice.
# Multi-node: see training/verl/README.md (start Ray, then run this on the head node, or ray job submit).
set -euo pipefail

MODEL=${MODEL:?set MODEL to the stage-1 actor merged to Hugging Face format}
TRAIN_FILE=${TRAIN_FILE:?set TRAIN_FILE to the stage-2 set (pool entries JSONL)}
# The critic starts from the stage-1 actor with a fresh value head; point CRITIC_MODEL at a merged
# stage-1 critic to carry it over instead.
SEED=${SEED:-1}
EXPERIMENT=${EXPERIMENT:-stage2}

source "$(dirname "${BASH_SOURCE[0]}")/ppo.sh" "$@"
