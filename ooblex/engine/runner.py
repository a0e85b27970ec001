"""Runs user code off the event loop: a thread pool, a process pool, or a private loop for async code.

One ``Runner`` per tensor thread per worker. It converts colour order, applies per-frame
parameters, calls the user's code on one frame or a batch, and turns whatever comes back
(or whatever was raised) into processed ``Frame``s. It never raises for user errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import jpeg
from ..frame import Frame, Pixels
from ..thread import TensorThread, TensorThreadError, normalize_output

log = logging.getLogger("ooblex.runner")


class ReadOnlyFrame(TensorThreadError):
    """User code wrote into the frame it was given; frames are read-only views of the sender's buffer."""


class Runner:
    """Executes one tensor thread's calls on its own pool, ``thread.concurrency`` at a time."""

    def __init__(self, thread: TensorThread) -> None:
        self.thread = thread
        self._pool: cf.Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged: set[tuple[str, str]] = set()
        #: The thread takes JPEG bytes and decodes them itself (a framework adapter with its model on a GPU).
        self.decodes_jpeg = False
        self._loading: asyncio.Future[BaseException | None] | None = None
        #: When ``ready()`` finished loading the model (time.time()); 0 if it never had to.
        self.loaded_at = 0.0

    def start(self) -> None:
        if self.thread.executor == "process":
            import cloudpickle

            ctx = multiprocessing.get_context("spawn")
            self._pool = cf.ProcessPoolExecutor(self.thread.concurrency, mp_context=ctx, initializer=_init_child,
                                                initargs=(cloudpickle.dumps(self.thread),))
        elif self.thread.is_async:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name=f"ooblex-{self.thread.name}-loop",
                             daemon=True).start()
        else:
            self._pool = cf.ThreadPoolExecutor(self.thread.concurrency, thread_name_prefix=f"ooblex-{self.thread.name}")

    async def setup(self) -> None:
        """Load the model (``setup()``) before the first frame, off the event loop."""
        if self.thread.executor == "thread" and self.thread.is_class:
            inst = await asyncio.get_running_loop().run_in_executor(self._pool, self.thread.instance)
            self.decodes_jpeg = bool(getattr(inst, "decodes_jpeg", False)) and self.thread.color == "rgb"

    async def ready(self, strict: bool = False) -> None:
        """``setup()`` once: at a worker's start, or when the first frame needs it (a lazy worker); later calls
        wait for that one. A failed setup raises with ``strict`` (a worker's start); otherwise it is logged and
        each frame comes back flagged with the error, as for any failure of the user's code."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        error = await asyncio.shield(self._loading)
        if strict and error is not None:
            raise error

    @property
    def loading(self) -> bool:
        """The model is being loaded for its first frame: frames wait for it, they are not lost."""
        return self._loading is not None and not self._loading.done()

    async def _load(self) -> BaseException | None:
        started = time.monotonic()
        try:
            await self.setup()
        except Exception as exc:  # noqa: BLE001 - user code; its frames report the error
            log.exception("%s: setup() failed; its frames come back flagged with the error", self.thread.name)
            return exc
        finally:
            self.loaded_at = time.time()
        if self.thread.is_class:  # a function has nothing to load
            log.info("%s: loaded in %.1f s", self.thread.name, time.monotonic() - started)
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self.thread.executor == "thread":
            try:
                self.thread.teardown()
            except Exception:  # noqa: BLE001 - teardown problems must not block shutdown
                log.exception("%s: teardown failed", self.thread.name)

    async def process(self, frames: list[Frame]) -> list[Frame]:
        """Run ``frames`` (one, or a batch) through the thread; errors become flagged frames.

        A batch may mix streams with different parameters: each parameter set is one call.
        """
        groups: dict[str, list[Frame]] = {}
        for f in await self._pixels(frames):
            groups.setdefault(repr(sorted(f.params.items())), []).append(f)
        if len(groups) > 1:
            await asyncio.gather(*(self._process(g) for g in groups.values()))
        elif groups:
            await self._process(next(iter(groups.values())))
        return frames

    async def _pixels(self, frames: list[Frame]) -> list[Frame]:
        """The frames ready to run. Pixels a network broker left JPEG-coded are decoded here, off the event
        loop and on every core, unless the thread decodes them itself; a frame whose pixels do not decode
        comes back with its error, and the others run."""
        coded = [f for f in frames if f.jpeg is not None]
        if not coded or self.decodes_jpeg:
            return frames
        images = await asyncio.get_running_loop().run_in_executor(None, jpeg.decode_many,
                                                                  [f.jpeg for f in coded])
        bad: set[int] = set()
        for f, im in zip(coded, images, strict=True):
            f.jpeg = None
            if isinstance(im, np.ndarray):
                f.image = im
            else:
                f.error = f"{type(im).__name__}: {im}"
                bad.add(id(f))
        return [f for f in frames if id(f) not in bad]

    async def _process(self, frames: list[Frame]) -> None:
        images = [f.image if f.jpeg is None else f.jpeg for f in frames]
        params = frames[0].params
        started = time.time()
        try:
            if self._loop is not None:
                outs = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                    _call_async(self.thread, images, params), self._loop))
            elif self.thread.executor == "process":
                outs = await asyncio.get_running_loop().run_in_executor(self._pool, _call_in_child, images, params)
            else:
                outs = await asyncio.get_running_loop().run_in_executor(
                    self._pool, call_thread, self.thread, images, params)
        except Exception as exc:  # noqa: BLE001 - user code may raise anything; the stream goes on
            self._log_once(frames, exc)
            outs = [(None, None, None)] * len(frames)
            for f in frames:
                f.error = f"{type(exc).__name__}: {exc}"
        finished = time.time()
        for f, (img, res, note) in zip(frames, outs, strict=True):
            f.stamps.setdefault("started", started)
            f.stamps["finished"] = finished
            f.image = img  # None: pixels unchanged, so no broker carries them back (the stream has them)
            f.jpeg = None
            f.result = res
            f.note = note

    def _log_once(self, frames: list[Frame], exc: BaseException) -> None:
        for f in frames:
            key = (f.stream_id, type(exc).__name__)
            if key not in self._logged:
                self._logged.add(key)
                tb = "".join(traceback.format_exception(exc))
                log.error("tensor thread %s failed on stream %s (logged once per stream and error type; "
                          "frames pass through flagged):\n%s", self.thread.name, f.stream_id, tb)


#: (image or None, result, a note on how the image was converted or None) per frame.
Result = tuple[np.ndarray | None, dict[str, Any] | None, str | None]


def call_thread(thread: TensorThread, images: list[Pixels], params: dict[str, Any]) -> list[Result]:
    """Call user code synchronously on one image or a batch; returns (image, result) per input.

    JPEG bytes reach only a thread that decodes them itself (``Runner.decodes_jpeg``).
    """
    fn = thread.instance()
    inputs = [_to_user(thread, im) for im in images]
    with _read_only_hint(thread):
        if thread.batched:
            outs = _batch_outputs(thread, fn(inputs, **params), len(inputs))
        else:
            outs = [fn(inputs[0], **params)]
    return [_from_user(thread, o, im) for o, im in zip(outs, inputs, strict=True)]


async def _call_async(thread: TensorThread, images: list[Pixels], params: dict[str, Any]) -> list[Result]:
    fn = thread.instance()
    inputs = [_to_user(thread, im) for im in images]
    with _read_only_hint(thread):
        if thread.batched:
            outs = _batch_outputs(thread, await fn(inputs, **params), len(inputs))
        else:
            outs = [await fn(inputs[0], **params)]
    return [_from_user(thread, o, im) for o, im in zip(outs, inputs, strict=True)]


@contextlib.contextmanager
def _read_only_hint(thread: TensorThread) -> Iterator[None]:
    """numpy's "assignment destination is read-only" made into an error that says why and what to do."""
    try:
        yield
    except ValueError as exc:
        if "read-only" not in str(exc):
            raise
        raise ReadOnlyFrame(f"{thread.name} wrote into its input frame, which is read-only (it is the sender's "
                            "buffer, shared with other lanes): work on a copy, frame = frame.copy()") from exc


def _batch_outputs(thread: TensorThread, outs: Any, n: int) -> list[Any] | tuple[Any, ...]:
    """What a batched call returned, if it is a list with one output per frame; else the error that says so."""
    if isinstance(outs, (list, tuple)) and len(outs) == n:
        return outs
    got = f"{type(outs).__name__} of {len(outs)}" if hasattr(outs, "__len__") else type(outs).__name__
    raise TypeError(f"{thread.name} is batched (batch_size={thread.batch_size}): it is called with a list of "
                    f"frames and must return a list with one output per input frame (called with {n}, got {got})")


def _to_user(thread: TensorThread, image: Pixels) -> Pixels:
    if isinstance(image, bytes):
        return image
    if thread.color == "bgr":
        return np.ascontiguousarray(image[:, :, ::-1])
    # A read-only view: user code that writes into its input would corrupt the sender's buffer.
    view = image.view()
    view.flags.writeable = False
    return view


def _from_user(thread: TensorThread, out: Any, given: Pixels) -> Result:
    """(image or None if the user's code left the frame it was given as it was, result, note)."""
    o = normalize_output(thread, out, given)
    img = None if o.image is given else o.image
    if img is not None and thread.color == "bgr":
        img = np.ascontiguousarray(img[:, :, ::-1])
    return img, o.result, o.note


_child_thread: TensorThread | None = None


def _init_child(payload: bytes) -> None:
    import cloudpickle

    global _child_thread
    _child_thread = cloudpickle.loads(payload)
    _child_thread.instance()


def _call_in_child(images: list[Pixels], params: dict[str, Any]) -> list[Result]:
    assert _child_thread is not None
    return call_thread(_child_thread, images, params)
