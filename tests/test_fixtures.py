"""The real-service fixtures work: Redis, Orthanc + Python plugin, dcmtk, dciodvfy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
import redis
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.services import OrthancServer, dciodvfy, echoscu, require_testdata, storescu

pytestmark = pytest.mark.services

GE_IMAGE = ("real-mg", "openrem", "MG-Im-GE_Seno_1_ForPresentation.dcm")


def test_redis_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping() is True
    client.set("mammo-density-fixture", "ok")
    assert client.get("mammo-density-fixture") == b"ok"


def test_orthanc_runs_python_plugin(orthanc: OrthancServer) -> None:
    assert "python" in orthanc.get("/plugins").json()
    probe = orthanc.get("/mammo-density-probe").json()
    assert probe == {"plugin": "python", "instances": 0}


def test_orthanc_accepts_storescu(orthanc: OrthancServer, tmp_path: Path) -> None:
    src = require_testdata(*GE_IMAGE)
    echo = echoscu(orthanc.dicom_port, aet=orthanc.aet)
    assert echo.returncode == 0, echo.stderr
    shutil.copy(src, tmp_path / "image.dcm")
    sent = storescu([tmp_path / "image.dcm"], orthanc.dicom_port, aet=orthanc.aet)
    assert sent.returncode == 0, sent.stderr
    uid = pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID
    instances = orthanc.study_instances(uid)
    assert len(instances) == 1
    assert instances[0]["Modality"] == "MG"
    assert orthanc.get("/mammo-density-probe").json()["instances"] == 1


def test_dciodvfy_reports_errors(tmp_path: Path) -> None:
    """An MG object stripped of required attributes gives dciodvfy Error lines."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors, "dciodvfy found nothing wrong with an empty MG object"
    assert any("Study Instance UID" in e or "StudyInstanceUID" in e for e in errors)
