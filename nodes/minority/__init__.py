"""MinorityPrompt's ComfyUI face: the placeholder token, its guider and nodes."""
