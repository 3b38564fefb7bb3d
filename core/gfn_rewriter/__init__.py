"""GFlowNet prompt rewriter (Yun et al., CVPR 2025, arXiv:2502.11477; the paper names it PAG, which in
ComfyUI means Perturbed-Attention Guidance, so nothing here uses that name alone).

A causal language model rewrites a prompt; GFlowNet fine-tuning makes it sample rewrites with
probability proportional to p_ref(y|x)^(1/gamma) * exp(c(x, y)/beta) instead of maximizing the reward.
Inference: rewrite.py. Training: trainer.py (objectives.py: the GFlowNet's reward, flow head and losses;
rewards.py: task rewards; trajectories.py: sampling and scoring rewrites; checkpoint.py), run as
`python -m core.gfn_rewriter.train`.
"""
