"""The pack's own socket types, declared once; their type names are what saved workflows hold."""
from __future__ import annotations

from comfy_api.latest import io

RewardModel = io.Custom("REWARD_MODEL")  # a differentiable reward (core.rewards.base.Reward in a ModelPatcher)
MinorityToken = io.Custom("MINORITY_TOKEN")  # MinorityPrompt's learned placeholder, per encoder
IpgoTokens = io.Custom("IPGO_TOKENS")  # IPGO's learned prefix and suffix
MinorityOptions = io.Custom("MINORITY_OPTIONS")  # MinorityPrompt Options: {setting: value}
DateOptions = io.Custom("DATE_OPTIONS")  # DATE Options: {setting: value}
IpgoOptions = io.Custom("IPGO_OPTIONS")  # IPGO Options: {setting: value}
RewriterOptions = io.Custom("REWRITER_OPTIONS")  # Prompt Rewriter Options: {setting: value}
