"""A prompt's plain words, as a reward should read them: ComfyUI's prompt syntax removed.

CLIP Text Encode reads "(red:1.3)" as the word red with weight 1.3, "(red)" as red with weight 1.1,
"\\(" as a literal parenthesis and "embedding:name" as a textual-inversion embedding. A reward model
(CLIP score, ImageReward) tokenizes its text itself and knows none of that: fed the raw prompt it would
score the image against the characters "(", ":1.3" and "embedding:name". So every text a reward
scores against goes through `plain_words`, which parses weights with ComfyUI's own parser (so the
words are the ones CLIP Text Encode encodes) and drops embedding names (no words to read).
"""
from __future__ import annotations

import re

from comfy.sd1_clip import escape_important, token_weights, unescape_important

# ComfyUI reads an embedding after a space or a line break (or at the start); the name ends at white
# space, and a trailing comma stays a comma
_EMBEDDING = re.compile(r"(?:(?<=\s)|^)embedding:[^\s,]+")


def plain_words(text: str) -> str:
    segments = token_weights(escape_important(text), 1.0)
    words = "".join(unescape_important(segment) for segment, _weight in segments)
    words = _EMBEDDING.sub("", words)
    words = re.sub(r"[ \t]+", " ", words)
    words = re.sub(r" +([,.;:!?])", r"\1", words)  # "circle , red" after a removed name -> "circle, red"
    words = re.sub(r",( ?,)+", ",", words)
    words = re.sub(r"(^|\n)[ ,]+", r"\1", words)
    return "\n".join(line.strip().rstrip(",").strip() for line in words.split("\n")).strip()
