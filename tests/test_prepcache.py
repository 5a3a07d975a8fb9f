"""Prepare on arrival (worker/prepcache.py): the cache beside the spool, its invalidation,
crash safety, and the embedded and Celery-side pipelines using it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammo_density.config import load_settings
from mammo_density.durable import durable_write
from mammo_density.plugin.ingest import on_spooled_images
from mammo_density.plugin.spool import clean_partials
from mammo_density.spool_layout import SpoolImages
from mammo_density.study.slots import SLOTS
from mammo_density.worker import prepcache
from mammo_density.worker.pipeline import Pipeline
from mammo_density.worker.preprocess import PREPROCESSING_VERSION, preprocess_dataset
from tests.models import cached_registry_entry
from tests.studies import receive, study_files, synth_studies


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_registry_entry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return synth_studies(tmp_path_factory.mktemp("synth"), studies=2, seed=61,
                         transfer_syntax="jpeg2000")


@pytest.fixture(autouse=True)
def no_preparer():
    yield
    prepcache.stop()


def settings_for(tmp_path, model_dir, **extra):
    return load_settings(model_dir=model_dir, data_dir=tmp_path / "data", ort_threads=1,
                         **extra)


def pipeline(settings) -> Pipeline:
    return Pipeline(settings, images=SpoolImages(settings.spool_dir))


def assess(settings, job):
    p = pipeline(settings)
    prepared = p.prepare(job)
    return p.decide(job, prepared, p.infer(prepared))


def spooled_copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    shutil.copyfile(src, dst)
    return dst


def test_entry_is_the_pipelines_input_bit_for_bit(tmp_path, records):
    path = spooled_copy(study_files(records[0])[0], tmp_path / "spool" / "s")
    entries = prepcache.prepare_file(path, [64, 96])
    assert prepcache.cache_path(path, 64).name == \
        f"{path.stem}.{PREPROCESSING_VERSION}.64.prep"
    assert prepcache.cache_path(path, 64).parent == path.parent
    for size in (64, 96):
        expected, _ = preprocess_dataset(pydicom.dcmread(path), size, threads=1)
        got = prepcache.read_entry(path, size)
        assert got is not None and got.array.dtype == np.float32
        assert np.array_equal(got.array, expected)
        assert np.array_equal(entries[size].array, expected)
        assert got.quality is not None and "low_confidence" in got.quality
    # other key parts: another size or preprocessing version is a miss
    assert prepcache.read_entry(path, 128) is None
    assert prepcache.read_entry(path, 64, version="mdp-0") is None


def test_same_sop_received_again_with_other_content_invalidates(tmp_path, records):
    first, other = study_files(records[0])[0], study_files(records[1])[0]
    path = spooled_copy(first, tmp_path / "spool" / "s")
    prepcache.prepare_file(path, [64])
    assert prepcache.read_entry(path, 64) is not None
    # the spool replaces the file atomically (new inode); same name = same SOP UID
    tmp = path.with_suffix(".new")
    shutil.copyfile(other, tmp)
    os.replace(tmp, path)
    assert prepcache.read_entry(path, 64) is None
    assert not prepcache.cache_path(path, 64).exists()  # the stale entry is removed
    prepcache.prepare_file(path, [64])
    expected, _ = preprocess_dataset(pydicom.dcmread(other), 64, threads=1)
    assert np.array_equal(prepcache.read_entry(path, 64).array, expected)


def test_damaged_entries_are_misses_and_crash_leftovers_are_cleaned(tmp_path, records):
    spool = tmp_path / "spool"
    path = spooled_copy(study_files(records[0])[0], spool / "s")
    prepcache.prepare_file(path, [64])
    entry = prepcache.cache_path(path, 64)
    raw = entry.read_bytes()
    entry.write_bytes(raw[:-100] + bytes(b ^ 0xFF for b in raw[-100:]))  # bit rot: CRC
    assert prepcache.read_entry(path, 64) is None
    prepcache.prepare_file(path, [64])
    entry.write_bytes(raw[: len(raw) // 2])  # truncated
    assert prepcache.read_entry(path, 64) is None
    # a write that dies half-way leaves no entry, only a part file start-up removes
    def dies(fh):
        fh.write(raw[:1000])
        raise OSError("disk gone")

    with pytest.raises(OSError):
        durable_write(entry, dies)
    assert not entry.exists()
    (spool / "s" / f".{entry.name}.dead.part").write_bytes(raw[:1000])  # a killed process
    assert prepcache.read_entry(path, 64) is None
    assert clean_partials(spool) == 1
    assert list((spool / "s").glob("*.part")) == []


def test_received_images_are_prepared_in_the_background_and_used(tmp_path, model_dir,
                                                                 records):
    settings = settings_for(tmp_path, model_dir)
    preparer = prepcache.start_for(settings, on_spooled_images)
    assert preparer is not None
    jobs = []
    receive(settings, study_files(records[0]), jobs.append)
    assert len(jobs) == 1
    job = jobs[0]
    spool = SpoolImages(settings.spool_dir)
    paths = [spool.locate(job.study_instance_uid, im.sop_instance_uid) for im in job.images]
    for path in paths:
        preparer.wait(path)
    assert preparer.prepared == 4
    for path in paths:
        assert prepcache.read_entry(path, 64) is not None
    prepared = pipeline(settings).prepare(job)
    assert prepared.timings_ms["prepared_on_arrival"] == 4.0
    assert "decode" not in prepared.timings_ms  # nothing decoded at study time
    # the same inputs, warnings and quality as preparing at study time
    off = settings_for(tmp_path, model_dir, prepare_on_arrival=False)
    direct = pipeline(off).prepare(job)
    assert "prepared_on_arrival" not in direct.timings_ms
    for slot in SLOTS:
        assert np.array_equal(prepared.inputs[64][slot], direct.inputs[64][slot])
    assert prepared.warnings == direct.warnings
    assert prepared.quality == direct.quality
    result_cached = assess(settings, job)
    result_direct = assess(off, job)
    assert [v.probabilities for v in result_cached.views] == \
        [v.probabilities for v in result_direct.views]


def test_late_image_and_a_process_without_preparer_use_the_cache(tmp_path, model_dir,
                                                                 records):
    """A worker process (Celery) on the same spool has no Preparer of its own: it reads
    the entries the serve process wrote; an image without one is prepared as before."""
    settings = settings_for(tmp_path, model_dir)
    preparer = prepcache.start_for(settings, on_spooled_images)
    files = study_files(records[1])
    jobs = []
    receive(settings, files[:3], jobs.append)  # three views: not complete yet
    assert jobs == []
    for f in Path(settings.spool_dir).rglob("*.dcm"):
        preparer.wait(f)
    prepcache.stop()  # from here on: like a process without a preparer
    receive(settings, files[3:], jobs.append)  # the late fourth view, not prepared
    assert len(jobs) == 1
    prepared = pipeline(settings).prepare(jobs[0])
    assert prepared.timings_ms["prepared_on_arrival"] == 3.0
    assert set(prepared.inputs[64]) == set(SLOTS)
