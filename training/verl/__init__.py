"""The verl adapter: what verl needs to train a PaCoRe synthesizer, and nothing verl already does.

verl (volcengine/verl) runs the PPO loop, the SGLang rollouts, FSDP and Ray; this package gives it

- `training.verl.dataset.PacoreSynthesisDataset`: a custom dataset (``data.custom_cls``) whose every
  ``__getitem__`` draws a fresh message set M and renders P(x, M) (`training.env`);
- `training.verl.reward.compute_score`: the reward function (``reward.custom_reward_function``): the
  paper's reward on C(response), plus the episode flags as extra metrics;
- `training.verl.stage1_data` / `training.verl.stage2_filter`: the curriculum's data steps as scripts;
- ``stage1.sh`` / ``stage2.sh``: the launch scripts (each sets its defaults and sources ``ppo.sh``, the
  verl command with the paper's hyper-parameters).

Nothing here imports verl: the modules load (and are tested) without it; torch is needed only for the
dataset's base class and dummy tensor, as verl itself needs it.
"""
