"""Server streams read on a helper thread, so the caller can wake up periodically (to redraw a
progress display) and a Ctrl-C cancels the call instead of waiting for the next message."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .errors import from_rpc_error

_END = object()


class Ticks:
    """Marker yielded when ``tick`` seconds passed without a message."""


TICK = Ticks()


def pump(call: Any, tick: float | None) -> Iterator[Any]:
    """Yields the messages of a server-streaming ``call``; with ``tick``, also yields ``TICK``
    whenever ``tick`` seconds pass without one. gRPC errors are raised as typed errors; the
    call is cancelled when the consumer stops early."""
    if tick is None:
        try:
            yield from call
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()
        return

    q: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            for msg in call:
                q.put(msg)
            q.put(_END)
        except grpc.RpcError as e:
            q.put(e)
        except BaseException as e:  # pragma: no cover - defensive
            q.put(e)

    worker = threading.Thread(target=run, name="mlgw-stream", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = q.get(timeout=tick)
            except queue.Empty:
                yield TICK
                continue
            if item is _END:
                return
            if isinstance(item, grpc.RpcError):
                raise from_rpc_error(item) from None
            if isinstance(item, BaseException):  # pragma: no cover - defensive
                raise item
            yield item
    finally:
        call.cancel()


def open_stream(
    method: Callable[..., Any], request: Any, timeout: float | None, metadata: Any
) -> Any:
    """Starts a server-streaming call; errors starting it are typed too."""
    try:
        return method(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as e:  # pragma: no cover - grpc reports errors while iterating
        raise from_rpc_error(e) from None
