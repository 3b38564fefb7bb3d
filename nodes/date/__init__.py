"""DATE's ComfyUI face: its guider and nodes."""
