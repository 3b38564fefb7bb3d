"""The GFlowNet prompt rewriter's node and the models/prompt_rewriters folder."""
