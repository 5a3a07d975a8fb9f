"""The Orthanc plugin running inside a real Orthanc, with a real DICOM peer as the AI node.

The stand-in AI node is a pynetdicom Storage SCP (a real DICOM peer recording what it
receives); the whole path with ``mammo-density serve`` is in tests/test_e2e.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    Verification,
)

from mammo_density.plugin.orthanc import mammo_density_routing as logic
from mammo_density.worker.sr import build_density_sr
from tests import srdata
from tests.e2e_nodes import NODE_AET, routing_config
from tests.services import OrthancServer, free_port, storescu

pytestmark = pytest.mark.services

SCRIPT = Path(logic.__file__).resolve().parent / "mammo_density_orthanc.py"
AI_AET = NODE_AET  # the stand-in AI node answers as the node routing_config names


class AINode:
    """A pynetdicom Storage SCP on a fixed loopback port, started and stopped at will."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Dataset] = []
        self.lock = threading.Lock()
        self.server = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0x0000  # success

    def start(self) -> AINode:
        ae = AE(ae_title=AI_AET)
        ae.maximum_pdu_size = 0
        for cls in (DigitalMammographyXRayImageStorageForPresentation,
                    DigitalMammographyXRayImageStorageForProcessing):
            ae.add_supported_context(cls)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def uids(self) -> list[str]:
        with self.lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def send(datasets: list[Dataset], folder: Path, port: int) -> None:
    paths = srdata.save_all(datasets, folder)
    proc = storescu(paths, port, aet="ORTHANC")
    assert proc.returncode == 0, proc.stderr


def study_state(server: OrthancServer, study_uid: str) -> dict:
    oid = server.find_study(study_uid)
    assert oid is not None
    return server.get(f"/mammo-density/studies/{oid}").json()


def forwarded_state(server: OrthancServer, study_uid: str) -> dict:
    """The study's state once the plugin has recorded the forward: it does so when the
    synchronous C-STORE job returns, a moment after the AI node has the last image."""
    return wait_for(lambda: (state := study_state(server, study_uid))["forward"]["state"]
                    == "forwarded" and state, what="the forward recorded by the plugin")


@pytest.fixture
def ai_node() -> Iterator[AINode]:
    node = AINode().start()
    yield node
    node.stop()


@pytest.fixture
def routed(orthanc_factory, ai_node: AINode) -> OrthancServer:
    # StableAge 3 s: long enough to see that four views do not wait for it.
    return orthanc_factory(script=SCRIPT, extra={**routing_config(ai_node.port),
                                                 "StableAge": 3})


def test_four_views_forwarded_once_sr_never_forwarded(routed: OrthancServer, ai_node: AINode,
                                                      tmp_path: Path) -> None:
    images = srdata.mg_study()
    study_uid = str(images[0].StudyInstanceUID)
    started = time.monotonic()
    send(images, tmp_path / "study", routed.dicom_port)
    wait_for(lambda: len(ai_node.uids()) >= 4, what="the four views at the AI node")
    forwarded_after = time.monotonic() - started
    assert sorted(ai_node.uids()) == sorted(str(ds.SOPInstanceUID) for ds in images)
    state = forwarded_state(routed, study_uid)
    assert state["forward"]["reason"] == "four-views", forwarded_after
    assert state["result"] is None

    # The density SR comes back into the same study: shown by the plugin, never forwarded.
    man = srdata.manifest(demo=True)
    sr = build_density_sr(srdata.result_for(images, man=man), images, man)
    send([sr], tmp_path / "sr", routed.dicom_port)
    oid = routed.find_study(study_uid)

    def stable() -> bool:
        return bool(routed.get(f"/studies/{oid}").json().get("IsStable"))

    send(images, tmp_path / "again", routed.dicom_port)  # the modality sends it twice
    wait_for(stable, timeout=30, what="the study to become stable after the SR")
    time.sleep(1.5)  # the plugin handles STABLE_STUDY on its thread
    assert len(ai_node.uids()) == 4, "the SR or an image was forwarded again"
    data = study_state(routed, study_uid)
    result = data["result"]
    assert result["sop_instance_uid"] == str(sr.SOPInstanceUID)
    assert result["overall"]["category"] == "C" and result["overall"]["dense"] is True
    assert {s: b["category"] for s, b in result["breasts"].items()} == {"R": "C", "L": "B"}
    assert result["not_for_clinical_use"] is True
    assert result["partial"] is False
    assert data["forward"]["state"] == "forwarded"

    status = routed.get("/mammo-density/status").json()
    assert status["router_alive"] is True
    assert status["counters"]["forwarded_instances"] == 4
    assert status["pending"] == [] and status["failed"] == []
    metrics = routed.get("/tools/metrics-prometheus").text
    assert re.search(r"^mammo_density_forwarded_instances 4\b", metrics, re.M), metrics
    assert re.search(r"^mammo_density_pending_studies 0\b", metrics, re.M), metrics
    assert routed.get("/mammo-density/studies/not-a-study").status_code == 404
    assert "routing mammography studies" in routed.log_path.read_text()
    check_explorer_extension(routed)


def test_each_image_forwarded_as_it_is_stored(orthanc_factory, ai_node: AINode,
                                               tmp_path: Path) -> None:
    """ForwardEachImage: every view reaches the node before the next is stored; the fourth
    goes alone and completes the study; nothing is sent twice."""
    server = orthanc_factory(script=SCRIPT, extra={
        **routing_config(ai_node.port, ForwardEachImage=True), "StableAge": 3})
    images = srdata.mg_study()
    study_uid = str(images[0].StudyInstanceUID)
    for n, ds in enumerate(images[:3], start=1):
        send([ds], tmp_path / f"image-{n}", server.dicom_port)
        wait_for(lambda n=n: len(ai_node.uids()) >= n, what=f"image {n} at the AI node")
        assert ai_node.uids()[-1] == str(ds.SOPInstanceUID)
        forward = study_state(server, study_uid)["forward"]
        assert forward["state"] == "waiting" and len(forward["forwarded"]) == n
    send([images[3]], tmp_path / "image-4", server.dicom_port)
    wait_for(lambda: study_state(server, study_uid)["forward"]["state"] == "forwarded",
             what="the study forwarded")
    forward = study_state(server, study_uid)["forward"]
    assert forward["reason"] == "four-views" and len(forward["forwarded"]) == 4
    assert ai_node.uids() == [str(ds.SOPInstanceUID) for ds in images]

    send(images, tmp_path / "again", server.dicom_port)  # sent again: not forwarded again
    oid = server.find_study(study_uid)
    wait_for(lambda: server.get(f"/studies/{oid}").json().get("IsStable"),
             what="the study to become stable")
    time.sleep(1.5)
    assert len(ai_node.uids()) == 4
    status = server.get("/mammo-density/status").json()
    assert status["settings"]["ForwardEachImage"] is True
    assert status["counters"]["forwarded_instances"] == 4
    assert status["counters"]["forwarded_early"] == 3
    assert status["counters"]["forwarded_studies"] == 1
    assert status["pending"] == [] and status["failed"] == []


def test_each_image_node_down_mid_study_rest_sent_once(orthanc_factory,
                                                        tmp_path: Path) -> None:
    """ForwardEachImage with the node going down after two views: the third view's send
    fails, the study retries with back-off and, once the node is back, everything not
    yet sent reaches it; the two early views are not sent again."""
    node = AINode().start()
    server = orthanc_factory(script=SCRIPT, extra={
        **routing_config(node.port, ForwardEachImage=True, RetrySeconds=0.5,
                         MaxRetrySeconds=1, MaxRetries=100), "StableAge": 30})
    images = srdata.mg_study()
    study_uid = str(images[0].StudyInstanceUID)
    try:
        for n, ds in enumerate(images[:2], start=1):
            send([ds], tmp_path / f"image-{n}", server.dicom_port)
            wait_for(lambda n=n: len(node.uids()) >= n, what=f"image {n} at the AI node")
        node.stop()
        send([images[2]], tmp_path / "image-3", server.dicom_port)
        wait_for(lambda: study_state(server, study_uid)["forward"]["failures"] >= 1,
                 what="the failed send of the third view")
        forward = study_state(server, study_uid)["forward"]
        assert forward["state"] == "retrying" and len(forward["forwarded"]) == 2
        node.start()
        send([images[3]], tmp_path / "image-4", server.dicom_port)
        wait_for(lambda: len(node.uids()) >= 4, what="the rest of the study")
        wait_for(lambda: study_state(server, study_uid)["forward"]["state"] == "forwarded",
                 what="the study recorded as forwarded")
        time.sleep(1.5)  # a second send of anything would arrive by now
        assert sorted(node.uids()) == sorted(str(ds.SOPInstanceUID) for ds in images)
        assert len(study_state(server, study_uid)["forward"]["forwarded"]) == 4
    finally:
        node.stop()


def test_partial_study_waits_for_stable_other_studies_ignored(
        orthanc_factory, ai_node: AINode, tmp_path: Path) -> None:
    # one forward per study (ForwardEachImage off): a partial study waits for STABLE_STUDY
    routed = orthanc_factory(script=SCRIPT, extra={
        **routing_config(ai_node.port, ForwardEachImage=False), "StableAge": 3})
    partial = srdata.mg_study(("R-CC", "R-MLO", "L-CC"))
    ct = srdata.mg_study(("R-CC",))
    ct[0].Modality = "CT"
    ct[0].SOPClassUID = ct[0].file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    send(partial + ct, tmp_path / "studies", routed.dicom_port)
    sent_at = time.monotonic()
    wait_for(lambda: len(ai_node.uids()) >= 3, what="the partial study at the AI node")
    assert time.monotonic() - sent_at >= 2.0, "forwarded before the study was stable"
    assert forwarded_state(routed, str(partial[0].StudyInstanceUID))["forward"]["reason"] \
        == "stable"
    ct_oid = routed.find_study(str(ct[0].StudyInstanceUID))
    wait_for(lambda: routed.get(f"/studies/{ct_oid}").json().get("IsStable"),
             what="the CT study to become stable")
    time.sleep(1.0)
    assert len(ai_node.uids()) == 3
    assert study_state(routed, str(ct[0].StudyInstanceUID))["forward"] is None

    # Its SR (both breasts assessed, L-MLO missing) is shown as a partial study.
    man = srdata.manifest()
    sr = build_density_sr(srdata.result_for(partial, man=man), partial, man)
    send([sr], tmp_path / "sr", routed.dicom_port)
    result = study_state(routed, str(partial[0].StudyInstanceUID))["result"]
    assert set(result["breasts"]) == {"R", "L"}
    assert result["partial"] is True and result["overall"]["partial"] is True


def test_ai_node_down_retries_survive_restart_and_give_up(orthanc_factory,
                                                            tmp_path: Path) -> None:
    node = AINode()  # not listening yet
    server = orthanc_factory(script=SCRIPT, extra={
        **routing_config(node.port, RetrySeconds=0.5, MaxRetrySeconds=1, MaxRetries=5),
        "StableAge": 2})
    images = srdata.mg_study()
    study_uid = str(images[0].StudyInstanceUID)
    send(images, tmp_path / "study", server.dicom_port)
    wait_for(lambda: study_state(server, study_uid)["forward"]["failures"] >= 1,
             what="a failed attempt")
    status = server.get("/mammo-density/status").json()
    assert [row["state"] for row in status["pending"]] == ["retrying"]
    # logged a moment after the state is written
    wait_for(lambda: "failed (attempt 1" in server.log_path.read_text(), what="the log line")

    # Orthanc restarts while the study waits for its next try; the node is still down.
    server.restart()
    wait_for(lambda: study_state(server, study_uid)["forward"]["state"] == "failed",
             timeout=40, what="giving up after MaxRetries")
    # the plugin writes the study's state, then its lists
    status = wait_for(lambda: (status := server.get("/mammo-density/status").json())
                      ["failed"] and status, what="the failed list")
    assert [row["study"] for row in status["failed"]] == [server.find_study(study_uid)]
    wait_for(lambda: "giving up" in server.log_path.read_text(), what="the log line")

    # The administrator brings the node up and re-queues the study.
    node.start()
    try:
        oid = server.find_study(study_uid)
        answer = server.post(f"/mammo-density/studies/{oid}/forward", json={})
        assert answer.status_code == 200 and answer.json()["queued"] is True
        wait_for(lambda: len(node.uids()) >= 4, what="the study after re-queueing")
        assert sorted(node.uids()) == sorted(str(ds.SOPInstanceUID) for ds in images)
        wait_for(lambda: server.get("/mammo-density/status").json()["failed"] == [],
                 what="the failed list to clear")
        assert server.post("/mammo-density/studies/nope/forward").status_code == 404
        assert server.post(f"/mammo-density/studies/{oid}/forward",
                           data="{bad").status_code == 400
    finally:
        node.stop()


def test_restart_before_forward_resumes(orthanc_factory, tmp_path: Path) -> None:
    """Images stored, Orthanc stops before the node is reachable: forwarded after start."""
    node = AINode()
    server = orthanc_factory(script=SCRIPT, extra={
        **routing_config(node.port, RetrySeconds=0.5, MaxRetrySeconds=1, MaxRetries=100),
        "StableAge": 2})
    images = srdata.mg_study()
    send(images, tmp_path / "study", server.dicom_port)
    wait_for(lambda: study_state(server, str(images[0].StudyInstanceUID))["forward"]
             ["failures"] >= 1, what="a failed attempt")
    server.stop()
    node.start()
    try:
        server.start()
        wait_for(lambda: len(node.uids()) >= 4, what="the forward after the restart")
        time.sleep(1.0)
        assert sorted(node.uids()) == sorted(str(ds.SOPInstanceUID) for ds in images)
        assert "unfinished forwards after start-up" in server.log_path.read_text()
    finally:
        node.stop()


def test_bad_configuration_stops_orthanc(orthanc_factory) -> None:
    server = orthanc_factory(script=SCRIPT, extra={"MammoDensity": {"Modalty": "x"}},
                             start=False)
    with pytest.raises(RuntimeError, match="exited"):
        server.start(timeout=20)
    assert "unknown key(s) Modalty" in server.tail_log()


def check_explorer_extension(server: OrthancServer) -> None:
    js = server.get("/plugins/explorer.js").text
    assert "mammo-density/studies/" in js and "pagebeforeshow" in js
    node = shutil.which("node")
    if node is None:
        return  # JavaScript syntax not checked where node is absent
    path = server.workdir / "explorer.js"
    path.write_text(js)
    proc = subprocess.run([node, "--check", str(path)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
