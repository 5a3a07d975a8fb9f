"""OHIF renders the summary image (tests/viewer/ohif_check.py), as a pytest.

Marked ``viewer`` and left out of the default run (``make test``): it needs npm to fetch
the built OHIF app (~50 MB download, ~200 MB unpacked) and headless Chromium, and takes
~30-90 s on the shared 2-core machine. Run it with ``tests/viewer/ohif_check.sh`` or
``pytest -m viewer tests/viewer``.
"""

from __future__ import annotations

import shutil

import pytest

from tests.viewer import ohif_check

pytestmark = [pytest.mark.viewer, pytest.mark.services, pytest.mark.slow]


def test_ohif_shows_the_summary_image() -> None:
    for program in ("chromium", "npm"):
        if shutil.which(program) is None and \
                not (program == "npm" and (ohif_check.OUT / "cache").is_dir()):
            pytest.skip(f"{program} not installed (make viewer-deps)")
    if not ohif_check.DICOMWEB_PLUGIN.is_file():
        pytest.skip("orthanc-dicomweb not installed (make viewer-deps)")
    found = ohif_check.run()
    assert found["yellow"] > 2000 and found["red"] > 2000, found
