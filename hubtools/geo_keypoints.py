"""Key points of a text, and whether another text keeps them: how the GEO reward and eval check that a
rewritten source still says what the original said (the GEO study's keypoint support and contradictions).

Through the LLM judge (`hubtools.judge.Judge`), with two packaged prompts:

* `geo_keypoints` lists a text's key points: the reply is one JSON object ``{"keypoints": [...]}`` (in a
  ```json fence or not, after any reasoning) of non-empty strings. More than `max_points` are cut to the
  first `max_points`, repeats (case and spacing aside) count once; anything else — prose around the
  JSON, an empty list, a non-string item — does not parse.
* `geo_support` labels one key point against a text: SUPPORTED, CONTRADICTED or NOT_MENTIONED, the
  whole reply (`hubtools.scoring.parse_grader_label`).

A reply that does not parse, or a failed call, is None, counted by the judge under the template's name
(`judge.stats("geo_keypoints")`), never a verdict. ``<text>`` / ``<statement>`` tags inside the material
reach the judge as ``&lt;text`` (a rewrite cannot close its block and address the judge).

    points = await keypoints(judge, original)              # ["...", ...] or None
    kept = await preservation(judge, points, rewrite)      # Preservation(supported, contradicted, judged, asked)
    kept.support, kept.contradiction                       # shares of the judged key points
    await compare(judge, original, rewrite)                # both ways: the GEO study's support and contradictions
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from hubtools.judge import reply_payload, strict_json

KEYPOINTS = "geo_keypoints"
SUPPORT = "geo_support"
SUPPORT_LABELS = ("SUPPORTED", "CONTRADICTED", "NOT_MENTIONED")
MAX_POINTS = 8


def parse_keypoints(reply: str, max_points: int = MAX_POINTS) -> list[str]:
    """The key points in a `geo_keypoints` reply (rules in the module docstring); ValueError otherwise."""
    try:
        obj = strict_json(reply_payload(reply))
    except ValueError:
        raise ValueError(f"not a JSON object: {reply!r}") from None
    points = obj.get("keypoints") if isinstance(obj, dict) else None
    if not isinstance(points, list) or not points:
        raise ValueError(f"no non-empty 'keypoints' list in {reply!r}")
    if not all(isinstance(p, str) and p.strip() for p in points):
        raise ValueError(f"a key point is not a non-empty string in {reply!r}")
    unique: dict[str, str] = {}
    for point in points:
        unique.setdefault(" ".join(point.split()).lower(), " ".join(point.split()))
    return list(unique.values())[:max_points]


@dataclass(frozen=True)
class Preservation:
    """How many of `asked` key points a text supports or contradicts; `judged` = labels that parsed."""

    supported: int
    contradicted: int
    judged: int
    asked: int

    @property
    def support(self) -> float | None:
        """Supported share of the judged key points; None when none was judged."""
        return self.supported / self.judged if self.judged else None

    @property
    def contradiction(self) -> float | None:
        """Contradicted share of the judged key points; None when none was judged."""
        return self.contradicted / self.judged if self.judged else None


async def keypoints(judge, text: str, max_points: int = MAX_POINTS) -> list[str] | None:
    """The judge's key points of `text`; None when the call failed or the reply did not parse."""
    reply = await judge.complete(KEYPOINTS, metric=KEYPOINTS, text=text, max_points=max_points)
    return None if reply is None else judge.parsed(parse_keypoints, reply, max_points, KEYPOINTS)


async def preservation(judge, points: Sequence[str], text: str) -> Preservation:
    """Each key point labelled against `text` by the judge, concurrently, and counted."""
    labels = await asyncio.gather(*(judge.label(SUPPORT, SUPPORT_LABELS, metric=SUPPORT, statement=p,
                                                text=text) for p in points))
    return Preservation(supported=labels.count("SUPPORTED"), contradicted=labels.count("CONTRADICTED"),
                        judged=sum(label is not None for label in labels), asked=len(labels))


async def _listed(points: list[str]) -> list[str]:
    return points


async def compare(judge, original: str, rewrite: str, original_points: Awaitable | list[str] | None = None,
                  max_points: int = MAX_POINTS) -> dict | None:
    """The study's key-point check both ways: {support_original: share of the original's key points the
    rewrite supports, support_rewrite: share of the rewrite's the original supports, contradictions:
    CONTRADICTED labels both ways}; None when a list failed or any label did not parse (an unjudged
    point could hide a contradiction). `original_points`: the original's key points, or their listing
    under way (one listing shared by every rewrite of a source); by default they are listed here."""
    if original_points is None:
        original_points = keypoints(judge, original, max_points)
    elif isinstance(original_points, list):
        original_points = _listed(original_points)
    points, rewrite_points = await asyncio.gather(original_points, keypoints(judge, rewrite, max_points))
    if points is None or rewrite_points is None:
        return None
    kept, back = await asyncio.gather(preservation(judge, points, rewrite), preservation(judge, rewrite_points, original))
    if kept.judged < kept.asked or back.judged < back.asked:
        return None
    return {"support_original": kept.support, "support_rewrite": back.support,
            "contradictions": kept.contradicted + back.contradicted}
