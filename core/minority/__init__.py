"""MinorityPrompt's math (arXiv 2410.07838): the objective, token initializations, per-step optimization."""
