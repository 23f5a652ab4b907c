"""Output budgets: stdout, stderr and the result value are cut to a budget for the model (head and
tail, with exact counts of what was cut), and the full text is saved as a file in the session, so
a flood of output costs the agent a few thousand characters instead of its whole context.
Images are fitted to a byte budget, capped per call, and kept full size in the session."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio

from dynamic_sessions_mcp import images
from dynamic_sessions_mcp.identity import log_id
from dynamic_sessions_mcp.pools.base import Execution, Pool, PoolError

logger = logging.getLogger(__name__)

OUTPUTS_DIR = ".outputs"  # under /mnt/data, one set of files per execution


@dataclass(frozen=True)
class OutputLimits:
    max_chars: int  # per stream and for the result value
    image_max_bytes: int
    max_images: int


@dataclass(frozen=True)
class Cut:
    """A text as the model sees it: all of it, or its head and tail around an omitted middle."""

    head: str
    tail: str = ""
    omitted_chars: int = 0
    omitted_lines: int = 0  # newlines in the omitted middle (whole lines when it was cut at lines)

    @property
    def cut(self) -> bool:
        return self.omitted_chars > 0


def cut(text: str, budget: int) -> Cut:
    """Keep about `budget` characters: half from the start, half from the end, at line breaks
    when one is near, so the model sees how the output began and how it ended."""
    if len(text) <= budget:
        return Cut(text)
    head_end = budget // 2
    tail_start = len(text) - (budget - head_end)
    newline = text.rfind("\n", head_end // 2, head_end)
    if newline != -1:
        head_end = newline + 1
    newline = text.find("\n", tail_start, tail_start + (budget - budget // 2) // 2)
    if newline != -1:
        tail_start = newline + 1
    omitted = text[head_end:tail_start]
    return Cut(text[:head_end], text[tail_start:], len(omitted), omitted.count("\n"))


@dataclass(frozen=True)
class SavedFile:
    kind: str  # "stdout", "stderr", "result" or "image"
    path: str  # relative to /mnt/data
    size: int  # bytes


@dataclass(frozen=True)
class ShapedImage:
    fitted: images.Fitted
    saved: SavedFile | None  # the full-size file in the session


@dataclass
class Shaped:
    """An execution as the model will see it: bounded texts, fitted images, the files saved."""

    execution: Execution
    stdout: Cut
    stderr: Cut
    result: Any  # the JSON value, or its cut rendering (a string) when it was over budget
    result_cut: Cut | None  # set when the result value was cut
    images: list[ShapedImage] = field(default_factory=list)
    images_not_attached: int = 0  # over the per-call cap, or impossible to fit
    saved: list[SavedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def saved_as(self, kind: str) -> SavedFile | None:
        return next((f for f in self.saved if f.kind == kind), None)

    @property
    def truncated(self) -> bool:
        return self.stdout.cut or self.stderr.cut or self.result_cut is not None


def render_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def shape(
    pool: Pool, identifier: str, execution: Execution, spill_id: str, limits: OutputLimits
) -> Shaped:
    """Cut the texts, save what was cut and every image full size, fit the images to attach."""
    shaped = Shaped(
        execution=execution,
        stdout=cut(execution.stdout, limits.max_chars),
        stderr=cut(execution.stderr, limits.max_chars),
        result=execution.result,
        result_cut=None,
    )
    saver = _Saver(pool, identifier, spill_id, shaped)
    for kind, text, piece in (
        ("stdout", execution.stdout, shaped.stdout),
        ("stderr", execution.stderr, shaped.stderr),
    ):
        if piece.cut:
            await saver.save(kind, f"{kind}.txt", text.encode("utf-8", "surrogatepass"))
    if execution.result is not None:
        rendered = render_value(execution.result)
        result_cut = cut(rendered, limits.max_chars)
        if result_cut.cut:
            shaped.result_cut = result_cut
            shaped.result = result_cut.head + "…" + result_cut.tail
            suffix = "txt" if isinstance(execution.result, str) else "json"
            await saver.save("result", f"result.{suffix}", rendered.encode("utf-8", "surrogatepass"))
    if execution.streams_cut_at is not None:
        shaped.notes.append(
            f"the pool may have cut stdout/stderr at {execution.streams_cut_at:,} bytes before the "
            "bridge saw them; write large outputs to a file instead of printing them"
        )
    for number, image in enumerate(execution.images, start=1):
        saved = await saver.save("image", f"image-{number}.{image.format}", image.data)
        fitted = None
        if number <= limits.max_images:
            fitted = await anyio.to_thread.run_sync(
                images.fit, image.data, image.format, limits.image_max_bytes
            )
        if fitted is None:
            shaped.images_not_attached += 1
        else:
            shaped.images.append(ShapedImage(fitted, saved))
    return shaped


class _Saver:
    """Uploads output files; a failed upload becomes a note, never a failed tool call."""

    def __init__(self, pool: Pool, identifier: str, spill_id: str, shaped: Shaped) -> None:
        self._pool, self._identifier, self._spill_id, self._shaped = pool, identifier, spill_id, shaped

    async def save(self, kind: str, name: str, data: bytes) -> SavedFile | None:
        path = f"{OUTPUTS_DIR}/{self._spill_id}-{name}"
        try:
            info = await self._pool.upload(self._identifier, path, data)
        except PoolError as exc:
            logger.warning("could not save %s of session %s: %s", kind, log_id(self._identifier), exc.message)
            self._shaped.notes.append(f"the full {kind} could not be saved in the session ({exc.message})")
            return None
        saved = SavedFile(kind, path, info.size or len(data))
        self._shaped.saved.append(saved)
        return saved
