#!/usr/bin/env bash
# PaCoRe stage 1: train a reasoning model into a synthesizer with verl (PPO + GAE, SGLang rollouts).
#
#   MODEL=/models/RLVR-8B TRAIN_FILE=data/stage1.jsonl bash training/verl/stage1.sh [more overrides]
#
# TRAIN_FILE is the stage-1 set (pool entries; python -m training.verl.stage1_data writes it). Every
# item draws |M| ~ U(16, 24) of its problem's cached messages afresh (training.verl.dataset) and is
# scored on C(response) (training.verl.reward): binary for math, pass rate for code.
# The paper's settings: GAE with gamma = lambda = 1, 16 problems x 64 responses per step, actor lr 2e-6,
# critic lr 5e-6, one PPO epoch over the whole batch (one update per step: strictly on-policy), no KL,
# no entropy bonus, temperature = top_p = 1. Lengths and parallelism are this machine's choice.
# Multi-node: see training/verl/README.md (start Ray, then run this on the head node, or ray job submit).
set -euo pipefail

MODEL=${MODEL:?set MODEL to the initial reasoning model (a Hugging Face folder or hub id)}
TRAIN_FILE=${TRAIN_FILE:?set TRAIN_FILE to the stage-1 set (pool entries JSONL)}
SEED=${SEED:-0}
EXPERIMENT=${EXPERIMENT:-stage1}

source "$(dirname "${BASH_SOURCE[0]}")/ppo.sh" "$@"
