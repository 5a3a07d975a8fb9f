"""highdicom's "does this SOP class carry pixel data?" answered once per class.

For every source image an SR or a secondary capture references, highdicom checks that
the image's SOP class is an image IOD (``does_iod_have_pixel_data``). Each check walks
every module and attribute of the IOD in the copy of the standard shipped with highdicom:
about 5 ms a call on the 2-core reference machine, six calls for one study's SR and
summary image (benchmarks/README.md, "Where the time went"). The answer depends only on
the SOP Class UID and on those tables, which do not change while a process runs, so it
is kept per class.

:func:`install` wraps the function in :func:`functools.lru_cache` in every highdicom
module that imported it; calling it again does nothing. A highdicom without the function
(another release) is left as it is: the reports are the same either way, only slower.
"""

from __future__ import annotations

import functools
import sys

import highdicom  # noqa: F401  (its modules must be loaded before they are looked at)

_NAME = "does_iod_have_pixel_data"


def install() -> bool:
    """Memoise highdicom's pixel-data check; True when the cached version is in place."""
    from highdicom import _standard_utils

    current = getattr(_standard_utils, _NAME, None)
    if current is None:
        return False
    original = getattr(current, "__wrapped__", current)
    cached = current if hasattr(current, "cache_info") \
        else functools.lru_cache(maxsize=256)(original)
    for name, module in list(sys.modules.items()):
        if (name == "highdicom" or name.startswith("highdicom.")) \
                and getattr(module, _NAME, None) is original:
            setattr(module, _NAME, cached)
    return True
