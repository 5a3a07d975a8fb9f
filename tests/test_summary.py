"""The summary image (docs/sr.md): a dciodvfy-clean Secondary Capture in the study, drawn
from the result, delivered by the outbox beside the SR (same retries, idempotence,
supersession per kind), and rendered by a real Orthanc (``/instances/{id}/preview``)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from mammo_density.config import load_settings
from mammo_density.plugin.outbox import Outbox
from mammo_density.result import StudyResult
from mammo_density.worker.sr import build_density_sr
from mammo_density.worker.summary import (
    SECONDARY_CAPTURE,
    build_summary_image,
    render_summary,
    summary_uids,
)
from tests import srdata
from tests.services import OrthancServer, dciodvfy, storescu

pytestmark = pytest.mark.services

OUT = Path(__file__).resolve().parents[1] / "out" / "summary"


def _views(seed: int = 0) -> dict[str, np.ndarray]:
    """Model-input-like arrays: a half-disc 'breast' on a zero background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    views = {}
    for slot in srdata.SLOTS:
        arr = np.zeros((128, 128), np.float32)
        mask = (xx / 100.0) ** 2 + ((yy - 64) / 55.0) ** 2 < 1
        arr[mask] = 0.3 + 0.4 * rng.random(int(mask.sum()), dtype=np.float32)
        views[slot] = arr
    return views


def _build(demo: bool = True, slots=srdata.SLOTS, sources=None, revision: int = 1):
    sources = sources or srdata.mg_study(slots)
    man = srdata.manifest(demo=demo)
    result = srdata.result_for(sources, man=man).model_copy(update={"revision": revision})
    sc = build_summary_image(result, sources, man, view_images=_views())
    return sources, man, result, sc


def _red_pixels(pixels: np.ndarray) -> int:
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return int(((r > 150) & (g < 90) & (b < 90)).sum())


def test_summary_image_is_a_valid_secondary_capture(tmp_path: Path) -> None:
    sources, man, result, sc = _build()
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    # the only warning: Laterality empty (both breasts), which dciodvfy cannot know
    assert all("Laterality" in w for w in warnings), warnings
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SECONDARY_CAPTURE
    assert ds.Modality == "OT" and ds.ConversionType == "WSD"
    assert ds.BurnedInAnnotation == "YES"
    assert ds.SeriesDescription.startswith("NOT FOR CLINICAL USE")
    for keyword in ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime"):
        assert str(ds.get(keyword, "")).strip(), keyword
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyDate"):
        assert ds.get(keyword) == sources[0].get(keyword), keyword
    assert {r.ReferencedSOPInstanceUID for r in ds.SourceImageSequence} == \
        {s.SOPInstanceUID for s in sources}
    sr = build_density_sr(result, sources, man)
    assert ds.SeriesNumber > sr.SeriesNumber
    assert ds.SeriesInstanceUID not in {sr.SeriesInstanceUID, sources[0].SeriesInstanceUID}
    assert ds.ImageComments.startswith("BI-RADS breast density (AI): C.")
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (960, 1280, 3)
    OUT.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ds.pixel_array).save(OUT / "summary-demo.png")  # artefact for people


def test_one_header_copy_serves_the_sr_and_the_summary_image() -> None:
    """The pipeline copies each source header once (``source_header``) for both report
    objects: neither builder changes the copies, and both objects are the same as when
    each builder copies the raw headers itself."""
    import copy as copy_module

    from mammo_density.worker.sr import SourceHeader, source_header

    sources = srdata.mg_study()
    sources[0].PatientSex = "U"  # a value the copy corrects
    man = srdata.manifest(demo=True)
    result = srdata.result_for(sources, man=man)
    shared = [source_header(ds) for ds in sources]
    assert all(isinstance(h, SourceHeader) for h in shared)
    assert source_header(shared[0]) is shared[0]  # no second copy
    assert sources[0].PatientSex == "U"  # the caller's dataset untouched
    before = [copy_module.deepcopy(h) for h in shared]

    clock = {"00080012", "00080013", "00080021", "00080031", "00080023", "00080033",
             "0040A032", "0018A002", "00181012", "00181014"}  # creation, capture times

    def payload(value):
        if isinstance(value, pydicom.Dataset):
            value = value.to_json_dict()
        if isinstance(value, dict):
            return {k: payload(v) for k, v in value.items() if k not in clock}
        if isinstance(value, list):
            return [payload(v) for v in value]
        return value

    for builder, kwargs in ((build_density_sr, {}),
                            (build_summary_image, {"view_images": _views()})):
        from_shared = builder(result, shared, man, **kwargs)
        from_raw = builder(result, sources, man, **kwargs)
        assert payload(from_shared) == payload(from_raw)
    assert [h.to_json_dict() for h in shared] == [h.to_json_dict() for h in before]


def test_uids_are_deterministic_and_follow_the_inputs() -> None:
    sources, man, result, sc = _build()
    again = build_summary_image(result, list(reversed(sources)), man)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == \
        (sc.SeriesInstanceUID, sc.SOPInstanceUID)
    assert summary_uids(result, man, sources) == (sc.SeriesInstanceUID, sc.SOPInstanceUID)
    changed = [*sources[:3], srdata.mg_image(result.study_instance_uid, "L-MLO")]
    series, instance = summary_uids(result, man, changed)
    assert series == sc.SeriesInstanceUID and instance != sc.SOPInstanceUID


def test_picture_shows_the_result() -> None:
    """Not blank; demo: red NOT FOR CLINICAL USE; bars scale with the probabilities; the
    breast outline (yellow) is drawn on each thumbnail that exists."""
    sources = srdata.mg_study()
    man = srdata.manifest(demo=True)
    result = srdata.result_for(sources, man=man)
    demo = render_summary(result, man, sentence="x", view_images=_views(), demo=True)
    plain = render_summary(result, man, sentence="x", view_images=_views(), demo=False)
    assert demo.shape == (960, 1280, 3) and demo.dtype == np.uint8
    assert plain.std() > 10  # not blank
    assert _red_pixels(demo) > 20000 and _red_pixels(plain) == 0
    # another result gives another picture
    flipped = result.model_copy(deep=True)
    flipped.breasts["R"].probabilities = {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1}
    assert np.abs(render_summary(flipped, man, sentence="x", view_images=_views()).astype(int)
                  - plain.astype(int)).sum() > 0
    # thumbnails with their outline vs none: missing views drawn as notes
    no_views = render_summary(result, man, sentence="x", view_images={}, demo=False)
    yellow = (plain[..., 0] > 200) & (plain[..., 1] > 170) & (plain[..., 2] < 90)
    yellow_none = (no_views[..., 0] > 200) & (no_views[..., 1] > 170) & (no_views[..., 2] < 90)
    assert yellow[:, :450].sum() > yellow_none[:, :450].sum() + 500


def test_watermark_bands_paint_what_one_paste_of_the_whole_mask_paints() -> None:
    """The watermark is pasted band by band, each cropped to the text (worker/summary.py
    ``_watermark_tiles``): every pixel as one paste through the whole mask gives it."""
    from mammo_density.worker import summary

    size = (summary.WIDTH, summary.HEIGHT)
    noise = Image.effect_noise(size, 60).convert("RGB")
    whole = noise.copy()
    whole.paste(summary._WATERMARK_RGB, (0, 0), summary._watermark_mask(size))
    banded = summary._watermark(noise.copy())
    assert np.array_equal(np.asarray(banded), np.asarray(whole))
    assert np.asarray(banded).tobytes() != noise.tobytes()
    assert len(summary._watermark_tiles(size)) > 10


def test_not_assessable_and_partial_studies_render(tmp_path: Path) -> None:
    sources = srdata.mg_study(["R-CC"])
    man = srdata.manifest()
    result = StudyResult(study_instance_uid=sources[0].StudyInstanceUID, assessable=False,
                         partial=True, missing_views=["L-CC", "R-MLO", "L-MLO"],
                         warnings=["R-CC: image not used: image too small"])
    sc = build_summary_image(result, sources, man)
    path = tmp_path / "na.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy(path)[0] == []
    assert "not assessable (R-CC: image not used: image too small)" in sc.ImageComments
    assert not sc.SeriesDescription.startswith("NOT FOR CLINICAL USE")
    _, _, partial, sc2 = _build(demo=False, slots=("L-CC", "L-MLO"))
    assert "Partial study. Views used: L-CC, L-MLO; missing: R-CC, R-MLO." in sc2.ImageComments
    from mammo_density.worker.summary import _view_notes

    notes = _view_notes(partial, {"L-CC", "L-MLO"})
    assert notes["R-CC"] == "missing from the study"
    assert notes["L-CC"] == "used (no thumbnail at hand)"
    with pytest.raises(ValueError, match="sources"):
        build_summary_image(partial, [], man)


def test_thumbnails_travel_with_the_prepared_payload() -> None:
    """CPU host -> GPU host -> report host: the summary image's thumbnails go along."""
    from mammo_density.worker.pipeline import THUMBNAIL, Prepared, thumbnail

    views = _views()
    prepared = Prepared(study_instance_uid="1.2.3",
                        thumbnails={s: thumbnail(a) for s, a in views.items()})
    assert prepared.thumbnails["R-CC"].shape == (THUMBNAIL, THUMBNAIL)
    payload = prepared.to_payload()
    payload["arrays"] = {}  # what the inference task passes on
    back = Prepared.from_payload(payload)
    assert set(back.thumbnails) == set(views)
    assert all(np.array_equal(back.thumbnails[s], prepared.thumbnails[s]) for s in views)


def _settings(tmp_path: Path, destinations: list[str]):
    return load_settings(data_dir=tmp_path / "data", sr_destinations=destinations,
                         sr_retry_base_seconds=0.2, sr_retry_max_seconds=1.0,
                         sr_timeout_seconds=5.0)


def _wait(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def test_outbox_supersedes_per_kind(tmp_path: Path) -> None:
    """The summary image of a revision never supersedes that revision's SR; a newer
    revision's summary image supersedes the older summary image."""
    outbox = Outbox(_settings(tmp_path, ["PACS@127.0.0.1:1"]))
    sources, man, result, sc1 = _build()
    sr1 = build_density_sr(result, sources, man)
    outbox.enqueue(sr1, study_uid=sr1.StudyInstanceUID)
    outbox.enqueue(sc1, study_uid=sc1.StudyInstanceUID)
    outbox.enqueue(sc1, study_uid=sc1.StudyInstanceUID)  # again: nothing new
    assert outbox.deliveries(sr1.SOPInstanceUID)[0]["status"] == "pending"
    assert len(outbox.deliveries(sc1.SOPInstanceUID)) == 1
    assert outbox.deliveries(sc1.SOPInstanceUID)[0]["status"] == "pending"
    extra = srdata.mg_image(sr1.StudyInstanceUID, "R-CC")
    _, _, _, sc2 = _build(sources=[*sources, extra], revision=2)
    outbox.enqueue(sc2, study_uid=sc2.StudyInstanceUID)
    assert outbox.deliveries(sc1.SOPInstanceUID)[0]["status"] == "superseded"
    assert outbox.deliveries(sr1.SOPInstanceUID)[0]["status"] == "pending"


def test_sr_and_summary_image_land_once_in_orthanc_across_pacs_down_and_restart(
        tmp_path: Path, orthanc: OrthancServer) -> None:
    """The four images in Orthanc; Orthanc goes down; SR and summary image are enqueued
    and fail; the outbox restarts; Orthanc comes back: each lands exactly once, in the
    same study, and Orthanc renders the summary image as a PNG."""
    sources, man, result, sc = _build()
    sr = build_density_sr(result, sources, man)
    study_uid = str(sr.StudyInstanceUID)
    proc = storescu(srdata.save_all(sources, tmp_path / "images"), orthanc.dicom_port,
                    aet=orthanc.aet)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    settings = _settings(tmp_path, [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"])
    orthanc.stop()
    first = Outbox(settings)
    first.enqueue(sr, study_uid=study_uid)
    first.enqueue(sc, study_uid=study_uid)
    assert first.deliver_due() == 0
    del first
    second = Outbox(settings)
    stop = threading.Event()
    loop = threading.Thread(target=second.run_forever, args=(stop, 0.2), daemon=True)
    loop.start()
    try:
        assert _wait(lambda: all(second.deliveries(u)[0]["attempts"] >= 2
                                 for u in (sr.SOPInstanceUID, sc.SOPInstanceUID)), 30)
        orthanc.start()
        assert _wait(lambda: all(second.deliveries(u)[0]["status"] == "delivered"
                                 for u in (sr.SOPInstanceUID, sc.SOPInstanceUID)), 60)
    finally:
        stop.set()
        loop.join(timeout=30)
    # enqueued again (a re-run): nothing new
    second.enqueue(sc, study_uid=study_uid)
    second.enqueue(sr, study_uid=study_uid)
    assert second.deliver_due() == 0
    instances = orthanc.study_instances(study_uid)
    by_modality: dict[str, list[str]] = {}
    for inst in instances:
        by_modality.setdefault(inst["Modality"], []).append(inst["SOPInstanceUID"])
    assert sorted(by_modality["MG"]) == sorted(s.SOPInstanceUID for s in sources)
    assert by_modality["SR"] == [sr.SOPInstanceUID]
    assert by_modality["OT"] == [sc.SOPInstanceUID]
    # Orthanc renders it (what Orthanc Explorer's "preview" shows)
    oid = orthanc.find_study(study_uid)
    [sc_id] = [i["ID"] for i in orthanc.get(f"/studies/{oid}/instances").json()
               if i["MainDicomTags"].get("SOPInstanceUID") == sc.SOPInstanceUID]
    preview = orthanc.get(f"/instances/{sc_id}/preview")
    assert preview.status_code == 200 and preview.headers["Content-Type"] == "image/png"
    png = np.asarray(Image.open(io.BytesIO(preview.content)).convert("RGB"))
    assert png.shape == (960, 1280, 3) and png.std() > 10
    assert _red_pixels(png) > 20000  # NOT FOR CLINICAL USE made it through
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "orthanc-preview.png").write_bytes(preview.content)


def test_a_pacs_without_jpeg_gets_the_summary_image_uncompressed(tmp_path: Path,
                                                                 orthanc_factory) -> None:
    """The JPEG summary image is offered as it is and uncompressed; a PACS that takes only
    uncompressed data gets it decompressed."""
    from mammo_density.plugin.send import c_store

    server = orthanc_factory(extra={"JpegTransferSyntaxAccepted": False}, name="nojpeg")
    _, _, _, sc = _build()
    assert sc.file_meta.TransferSyntaxUID.is_compressed
    note = c_store(sc, ae_title=server.aet, host="127.0.0.1", port=server.dicom_port,
                   calling_aet="MAMMODENSITY", timeout=10)
    assert note == "0x0000"
    oid = server.find_study(sc.StudyInstanceUID)
    [inst] = server.get(f"/studies/{oid}/instances").json()
    syntax = server.get(f"/instances/{inst['ID']}/metadata/TransferSyntax").text.strip()
    assert syntax == "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    assert sc.file_meta.TransferSyntaxUID.is_compressed  # the caller's object is untouched
