"""Text-encode nodes the methods share: keep the prompt text, many prompts as one batch."""
