"""Attention maps inline in Jupyter: the self-contained viewer page inside an ``<iframe srcdoc>``.

The page of :func:`attnkit.inspect.html.render_viewer` is HTML-escaped into the iframe's
``srcdoc``, so it stays one document of its own: its Content-Security-Policy meta is in force,
its element ids and CSS cannot clash with the notebook page (or with another viewer), and it
loads nothing from the network. Each iframe gets a unique ``id`` and ``name``.

    >>> maps.show()              # in a notebook: displays the viewer
    >>> maps                     # the same, through ``_repr_html_``
    >>> html = viewer_iframe(page)  # the <iframe> element as a string
"""

from __future__ import annotations

import html
import itertools
import os
import uuid
from typing import Any

__all__ = ["IFRAME_CLASS", "show_html", "viewer_iframe"]

IFRAME_CLASS = "attnkit-viewer"
_counter = itertools.count()


def viewer_iframe(page: str, height: int = 640) -> str:
    """The viewer ``page`` (a full HTML document) as one ``<iframe srcdoc="...">`` element.

    Args:
        page: an HTML document, e.g. from :func:`~attnkit.inspect.html.render_viewer`.
        height: the iframe's height in CSS pixels (its width is the cell's), at least 50.

    Raises:
        ValueError: an empty or non-string ``page``, or a ``height`` that is not an int >= 50.

    Examples:
        >>> viewer_iframe(render_viewer(tokens, maps.stacked(), maps.layers, maps.heads))
    """
    if not isinstance(page, str) or not page:
        raise ValueError(f"page must be a non-empty HTML string, got {type(page).__name__}")
    if isinstance(height, bool) or not isinstance(height, int) or height < 50:
        raise ValueError(f"height must be an int >= 50 (CSS pixels), got {height!r}")
    # unique across processes (uuid) and within one (counter), so two outputs never share an id
    fid = f"attnkit-viewer-{uuid.uuid4().hex[:8]}-{os.getpid()}-{next(_counter)}"
    return (
        f'<iframe id="{fid}" name="{fid}" class="{IFRAME_CLASS}" sandbox="allow-scripts" '
        f'style="width:100%;height:{height}px;border:1px solid #ccc" '
        f'srcdoc="{html.escape(page, quote=True)}"></iframe>'
    )


def show_html(fragment: str) -> Any:
    """Display an HTML ``fragment`` through IPython (in Jupyter); without IPython, raise an
    ``ImportError`` saying so and what to use instead.

    Args:
        fragment: the HTML to display.

    Raises:
        ImportError: IPython is not installed.

    Examples:
        >>> show_html(viewer_iframe(page))
    """
    try:
        from IPython.display import HTML, display
    except ImportError as e:
        raise ImportError(
            "show() displays the viewer in Jupyter and needs IPython (pip install ipython); "
            "outside a notebook, write the page with attnkit.inspect.html.write_viewer"
        ) from e
    display(HTML(fragment))
    return None
