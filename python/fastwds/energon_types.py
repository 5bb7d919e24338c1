"""The sample type the ``.nv-meta/dataset.yaml`` fastwds writes names by default.

Energon 7.4.1 ships no multi-turn chat sample type, and a ``dataset.yaml`` must name an importable
``Sample`` subclass. This module is imported by Energon in the training process, never by fastwds
itself (it needs megatron-energon and torch, which fastwds does not require). Training code that
has its own type with these fields (e.g. LLaVA-OneVision's ``MultiMixQASample``) can name it with
``--energon-sample-type MODULE:CLASS`` instead; the sample loader fills the same fields.
"""

from __future__ import annotations

from typing import Any, Optional

from megatron.energon import Sample
from megatron.energon.edataclass import edataclass


@edataclass
class ChatSample(Sample):
    """One multi-turn conversation with its images or videos."""

    #: The user/assistant turns, ``{"role", "content"}``, in order (the system prompt is apart).
    messages: list[dict]
    #: The images, decoded by Energon (one per ``<image>`` token), or None.
    image: Optional[list[Any]] = None
    #: The videos (Energon ``AVDecoder`` objects by default, one per ``<video>`` token), or None.
    video: Optional[list[Any]] = None
    #: The system prompt, or None.
    system: Optional[str] = None
