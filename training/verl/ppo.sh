#!/usr/bin/env bash
# The verl PPO launch shared by stage1.sh and stage2.sh: the paper's settings as Hydra overrides.
# The PPO settings are training.ppo.PPOConfig's defaults, the local trainer's (tests/test_verl_adapter.py
# checks they agree; training/README.md lists what still differs and why).
# Not run directly: the stage scripts set MODEL, TRAIN_FILE, SEED and EXPERIMENT, then source it.
set -euo pipefail
: "${MODEL:?run stage1.sh or stage2.sh, which set MODEL}" "${TRAIN_FILE:?}" "${SEED:?}" "${EXPERIMENT:?}"
VAL_FILE=${VAL_FILE:-$TRAIN_FILE}
CRITIC_MODEL=${CRITIC_MODEL:-$MODEL}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ROLLOUT_TP=${ROLLOUT_TP:-1}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-32768}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-32768}
MAX_TOKENS_PER_GPU=${MAX_TOKENS_PER_GPU:-$((MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH))}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-1}
SAVE_FREQ=${SAVE_FREQ:-20}
PROJECT=${PROJECT:-pacore}

# verl's workers import training.verl.* by name: the repository root must be on their path.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import training.verl.dataset, training.verl.reward" || {
    echo "cannot import training.verl: install pacore (pip install -e '$REPO_ROOT') or run from its root" >&2
    exit 1
}

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=gae \
    algorithm.gamma=1.0 \
    algorithm.lam=1.0 \
    algorithm.use_kl_in_reward=False \
    algorithm.kl_ctrl.kl_coef=0.0 \
    data.train_files="['$TRAIN_FILE']" \
    data.val_files="['$VAL_FILE']" \
    data.custom_cls.path=pkg://training.verl.dataset \
    data.custom_cls.name=PacoreSynthesisDataset \
    +data.pacore.lo=16 \
    +data.pacore.hi=24 \
    +data.pacore.seed="$SEED" \
    data.prompt_key=prompt \
    data.train_batch_size=16 \
    data.max_prompt_length="$MAX_PROMPT_LENGTH" \
    data.max_response_length="$MAX_RESPONSE_LENGTH" \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    data.shuffle=True \
    data.seed="$SEED" \
    reward.custom_reward_function.path=pkg://training.verl.reward \
    reward.custom_reward_function.name=compute_score \
    reward.reward_manager.name=naive \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.optim.lr=2e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=16 \
    actor_rollout_ref.actor.ppo_epochs=1 \
    actor_rollout_ref.actor.use_dynamic_bsz=True \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$MAX_TOKENS_PER_GPU" \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.kl_loss_coef=0.0 \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.clip_ratio=0.2 \
    actor_rollout_ref.actor.grad_clip=1.0 \
    actor_rollout_ref.actor.optim.weight_decay=0.0 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.rollout.name=sglang \
    actor_rollout_ref.rollout.n=64 \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.top_p=1.0 \
    actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP" \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True \
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu="$MAX_TOKENS_PER_GPU" \
    critic.model.path="$CRITIC_MODEL" \
    critic.model.use_remove_padding=True \
    critic.model.enable_gradient_checkpointing=True \
    critic.optim.lr=5e-6 \
    critic.optim.weight_decay=0.0 \
    critic.cliprange_value=0.2 \
    critic.grad_clip=1.0 \
    critic.ppo_mini_batch_size=16 \
    critic.loss_agg_mode=token-mean \
    critic.ppo_epochs=1 \
    critic.ppo_max_token_len_per_gpu="$MAX_TOKENS_PER_GPU" \
    trainer.critic_warmup=0 \
    trainer.nnodes="$NNODES" \
    trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.project_name="$PROJECT" \
    trainer.experiment_name="$EXPERIMENT" \
    trainer.logger='["console"]' \
    trainer.val_before_train=False \
    trainer.test_freq=-1 \
    trainer.save_freq="$SAVE_FREQ" \
    trainer.total_epochs="$TOTAL_EPOCHS" \
    "$@"
