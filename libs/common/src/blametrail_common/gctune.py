"""The cyclic garbage collector, tuned for a service that streams (call :func:`tune_gc` once,
from the composition root, after the imports and before the loop starts).

A service makes and drops tens of thousands of small objects a second (records, envelopes,
pydantic models, rows, HTTP answers); nearly all of them are freed by reference counting the
moment they are dropped, and the collector only has cycles left to find. At Python's own
thresholds (a young collection every 700 objects still alive, an older one every 10 of those)
it ran some 280 young and 25 older collections a thousand enrichments, each walking the objects
alive at that moment: about a fifth of the enricher's CPU (``bench/enrich``, measured with the
collector off as the floor). A young collection every 50,000 objects finds the same cycles,
later, at a few MB of garbage held meanwhile.

:func:`gc.freeze` moves what start-up made (modules, pydantic schemas, settings: tens of
thousands of objects that live as long as the process) to a permanent generation, so the
oldest collections stop walking them.
"""

from __future__ import annotations

import gc
import logging

from blametrail_common.settings import GcSettings

__all__ = ["parse_thresholds", "tune_gc"]

log = logging.getLogger(__name__)


def parse_thresholds(text: str) -> tuple[int, int, int] | None:
    """``"50000,20,10"`` -> ``(50000, 20, 10)``; empty -> ``None`` (keep Python's own).
    Raises ``ValueError`` naming what is wrong."""
    if not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"BLAMETRAIL_GC_THRESHOLDS must be three whole numbers, got {text!r}")
    first, second, third = (int(p) for p in parts)
    if first == 0:  # gc.set_threshold(0, ...) disables collection altogether
        raise ValueError("BLAMETRAIL_GC_THRESHOLDS: the first number must be above 0")
    return first, second, third


def tune_gc(settings: GcSettings | None = None) -> tuple[int, int, int]:
    """Apply ``settings`` (default: from the environment) to this process; the thresholds now."""
    settings = settings or GcSettings()
    thresholds = parse_thresholds(settings.gc_thresholds)
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    if settings.gc_freeze:
        gc.collect()  # what start-up left as garbage is freed, not frozen
        gc.freeze()
    now = gc.get_threshold()
    log.debug(
        "garbage collector tuned",
        extra={"thresholds": list(now), "frozen": gc.get_freeze_count()},
    )
    return now
