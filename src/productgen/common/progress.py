"""Progress bars for long work: tqdm when installed, a silent pass-through when not (bare GPU machines)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, unit: str = "it", enabled: bool = True, **kw: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr (hidden when ``enabled`` is false or stderr is not a terminal)."""
    if not enabled:
        return iter(iterable)
    try:
        from tqdm import tqdm
    except ImportError:
        return iter(iterable)
    return iter(tqdm(iterable, desc=desc, unit=unit, mininterval=0.5, disable=None, **kw))
