"""OHIF check: does a radiologist's web viewer show the density result?

Serves the built OHIF Viewer (npm package ``@ohif/app``, its ``dist/``) against a real
Orthanc with Debian's DICOMweb plugin, puts a synthetic study into Orthanc, runs the real
pipeline on it (bundled demo model) so that its SR and summary image come back through
the outbox, opens the study in headless Chromium and checks that the summary image is
drawn: the screenshot must show the image's own colours (the yellow category, the red
NOT FOR CLINICAL USE), which no part of OHIF's UI uses.

Run: ``tests/viewer/ohif_check.sh`` (or ``python -m tests.viewer.ohif_check``). Needs
npm (first run only: fetches @ohif/app, ~50 MB), chromium, orthanc, orthanc-dicomweb,
orthanc-python, dcmtk. Artefacts (screenshots, logs) go to ``out/viewer/``.
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tests.services import (
    HERE,
    ORTHANC_PYTHON_PLUGIN,
    REPO,
    OrthancServer,
    free_port,
    storescu,
)

OHIF_VERSION = "3.13.2"
LOG: list[str] = []  # DICOMweb requests OHIF made (status, bytes, path)
OUT = REPO / "out" / "viewer"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--enable-logging=stderr", "--v=0", "--enable-unsafe-swiftshader",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

APP_CONFIG = """// the viewer tour and the investigational-use notice would cover the viewport
try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}
window.config = {
  routerBasename: '/',
  investigationalUseDialog: {option: 'never'},
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: false,
  strictZSpacingForVolumeViewport: false,
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (mammo-density check)',
      name: 'orthanc',
      wadoUriRoot: '/dicom-web',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      staticWado: false,
      singlepart: 'bulkdata,video',
      bulkDataURI: {enabled: true, relativeResolution: 'studies'},
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def ohif_dist(cache: Path) -> Path:
    """The built OHIF app: ``npm pack @ohif/app@VERSION`` once, unpacked under ``cache``."""
    dist = cache / f"ohif-app-{OHIF_VERSION}" / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: needed once to fetch @ohif/app")
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--silent"], cwd=cache,
                   check=True, capture_output=True)
    with tarfile.open(cache / f"ohif-app-{OHIF_VERSION}.tgz") as tar:
        tar.extractall(cache / f"ohif-app-{OHIF_VERSION}", filter="data")
    return dist


class ViewerServer:
    """OHIF's static files with our app-config.js, and /dicom-web proxied to Orthanc (one
    origin: no CORS set-up); unknown paths answer index.html (OHIF routes client-side)."""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.port = free_port()
        dist_root, upstream = dist, orthanc_url

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(dist_root), **kw)

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    return self._proxy()
                if path == "/app-config.js":
                    body = APP_CONFIG.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/javascript")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return None
                if not (dist_root / path.lstrip("/")).is_file():
                    self.path = "/index.html"
                return super().do_GET()

            def _proxy(self) -> None:
                request = urllib.request.Request(upstream + self.path, headers={
                    k: v for k, v in self.headers.items() if k.lower() in ("accept",)})
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        body, status = answer.read(), answer.status
                        headers = answer.headers
                except urllib.error.HTTPError as err:
                    body, status, headers = err.read(), err.code, err.headers
                LOG.append(f"{status} {len(body)} {self.path[:160]}")
                self.send_response(status)
                for key in ("Content-Type",):
                    if headers.get(key):
                        self.send_header(key, headers[key])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ViewerServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def study_with_report(server: OrthancServer, work: Path) -> tuple[str, str]:
    """A synthetic study in Orthanc, then the real pipeline's SR and summary image sent
    back by the outbox. Returns (StudyInstanceUID, summary image SeriesInstanceUID)."""
    from mammo_density.commands.classify import collect_jobs
    from mammo_density.config import load_settings
    from mammo_density.plugin.outbox import Outbox
    from mammo_density.spool_layout import FileImages
    from mammo_density.synth import generate
    from mammo_density.worker.pipeline import Pipeline

    record = generate(work / "synth", studies=1, seed=43, size="small")[0]
    proc = storescu(record.paths, server.dicom_port, aet=server.aet)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    settings = load_settings(data_dir=work / "node",
                             sr_destinations=[f"{server.aet}@127.0.0.1:{server.dicom_port}"])
    collected = collect_jobs(record.paths)
    [job] = collected.jobs
    outbox = Outbox(settings)
    result = Pipeline(settings, images=FileImages(collected.files), outbox=outbox).run(job)
    deadline = time.monotonic() + 60
    while outbox.pending() and time.monotonic() < deadline:
        outbox.deliver_due()
        time.sleep(0.2)
    if outbox.pending():
        raise RuntimeError(f"not delivered: {outbox.pending()}")
    oid = server.find_study(record.study_instance_uid)
    series = server.get(f"/studies/{oid}/series").json()
    [sc_series] = [s["MainDicomTags"]["SeriesInstanceUID"] for s in series
                   if s["MainDicomTags"].get("Modality") == "OT"]
    print(f"study {result.exam.category if result.exam else '-'}: "
          f"{len(series)} series in Orthanc (images, SR, summary image)")
    return record.study_instance_uid, sc_series


def screenshot(url: str, path: Path, *, seconds: int = 60, size=(1600, 1000)) -> np.ndarray:
    """Headless Chromium's screenshot of ``url`` (RGB array)."""
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found (Debian package chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={seconds * 1000}", f"--screenshot={path}", url]
        proc = subprocess.run(cmd, capture_output=True, timeout=seconds * 4 + 60, text=True)
        (path.parent / (path.stem + ".chromium.log")).write_text(proc.stdout + proc.stderr)
    return np.asarray(Image.open(path).convert("RGB"))


def summary_pixels(rgb: np.ndarray) -> dict[str, int]:
    """Pixels in the summary image's own colours (its yellow, its red) in the viewport:
    right of the study browser (whose thumbnail shows them too, smaller)."""
    rgb = rgb[:, rgb.shape[1] // 5:]
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return {"yellow": int(((r > 220) & (g > 170) & (g < 230) & (b < 90)).sum()),
            "red": int(((r > 200) & (g < 80) & (b < 80)).sum())}


def run(keep: Path = OUT, seconds: int = 60) -> dict[str, int]:
    keep.mkdir(parents=True, exist_ok=True)
    if not DICOMWEB_PLUGIN.is_file():
        raise SystemExit(f"{DICOMWEB_PLUGIN} missing (Debian package orthanc-dicomweb)")
    dist = ohif_dist(keep / "cache")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = OrthancServer(work / "orthanc", HERE / "orthanc_probe.py", {
            "Plugins": [str(ORTHANC_PYTHON_PLUGIN), str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        })
        server.start()
        try:
            study_uid, sc_series = study_with_report(server, work)
            with ViewerServer(dist, server.url) as viewer:
                url = (f"{viewer.url}/viewer?StudyInstanceUIDs={study_uid}"
                       f"&SeriesInstanceUIDs={sc_series}")
                shot = screenshot(url, keep / "ohif-summary.png", seconds=seconds)
                if min(summary_pixels(shot).values()) < 2000:  # slow machine: once more
                    shot = screenshot(url, keep / "ohif-summary.png", seconds=2 * seconds)
                study_list = screenshot(f"{viewer.url}/", keep / "ohif-study-list.png",
                                        seconds=20)
        finally:
            server.stop()
            shutil.copy(server.log_path, keep / "orthanc.log") \
                if server.log_path.exists() else None
    (keep / "dicomweb-requests.log").write_text("\n".join(LOG) + "\n")
    found = summary_pixels(shot)
    print(f"screenshot {keep / 'ohif-summary.png'}: {found}; study list mean "
          f"{study_list.mean():.1f}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seconds", type=int, default=60,
                        help="virtual time Chromium gives OHIF to load and draw")
    args = parser.parse_args(argv)
    found = run(args.out, args.seconds)
    ok = found["yellow"] > 2000 and found["red"] > 2000
    print("OHIF shows the summary image" if ok else "summary image NOT visible in OHIF")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
