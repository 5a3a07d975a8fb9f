"""The whole path on real servers.

storescu -> Orthanc (routing plugin) -> ``mammo-density serve`` -> pipeline (a Celery
``mammo-density worker`` over a real Redis, or the embedded default) -> density SR
C-STOREd back with the summary image -> both found in the same study, each exactly once,
through Orthanc's REST API, the SR's codes equal to what ``mammo-density classify``
reports for the same images (and, with the bundled demo model, to the synthetic study's
ground truth).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from mammo_density.synth import generate
from mammo_density.worker.sr import read_density_sr
from tests.e2e_nodes import (
    SCRIPT,
    NodeProcess,
    classify_json,
    node_env,
    routing_config,
    serve,
    sr_dataset,
    study_srs,
    study_summaries,
    wait_for,
    worker,
)
from tests.services import OrthancServer, free_port, storescu

pytestmark = [pytest.mark.slow, pytest.mark.services]

SEED = 7
# A study the bundled demo model gets right, breasts of different classes (R C, L B: the
# exam takes the denser one): the demo model is ~98% accurate on synthetic exams, so the
# seed is pinned rather than drawn.
DEMO_SEED = 43
SR_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed-weight test model (the method's network, exported with the project's export)."""
    from tests.models import cached_registry_entry

    return cached_registry_entry(tmp_path_factory.mktemp("models"), seed=3)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return generate(tmp_path_factory.mktemp("synth"), studies=1, seed=SEED, size="small")[0]


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory: pytest.TempPathFactory):
    return generate(tmp_path_factory.mktemp("synth-demo"), studies=1, seed=DEMO_SEED,
                    size="small")[0]


def ground_truth(record) -> dict[str, str]:
    """True class per breast, from the synthetic set's manifest.csv (``true_density``)."""
    truth: dict[str, str] = {}
    with open(record.folder.parent / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["study_instance_uid"] == record.study_instance_uid and not row["extra"]:
                truth[row["laterality"]] = row["true_density"]
    return truth


def check_ground_truth(sr: dict, record) -> None:
    truth = ground_truth(record)
    assert sr["categories"] == truth
    assert sr["overall"] == max(truth.values())
    assert sr["not_for_clinical_use"] is True


def send_study(server: OrthancServer, paths: list[Path]) -> None:
    proc = storescu(paths, server.dicom_port, aet="ORTHANC")
    assert proc.returncode == 0, proc.stderr


def check_sr_matches_classify(server: OrthancServer, study, expected: dict,
                              processes: list[NodeProcess]) -> dict:
    """The SR in Orthanc carries classify's classes; exactly one SR and one summary image;
    the plugin shows the result."""
    def arrived() -> list[str]:
        for proc in processes:
            assert proc.running(), f"{proc.args[0]} exited:\n{proc.tail()}"
        srs = study_srs(server, study.study_instance_uid)
        return srs if srs and study_summaries(server, study.study_instance_uid) else []

    ids = wait_for(arrived, SR_TIMEOUT,
                   "the density SR and the summary image in Orthanc",
                   [p.tail for p in processes] + [server.tail_log])
    sr = read_density_sr(sr_dataset(server, ids[0]))
    assert sr["study_instance_uid"] == study.study_instance_uid
    assert sr["categories"] == {side: b["category"]
                                for side, b in expected["breasts"].items()}
    assert sr["overall"] == expected["exam"]["category"]
    assert sr["dense"] is expected["exam"]["dense"]
    oid = server.find_study(study.study_instance_uid)
    shown = server.get(f"/mammo-density/studies/{oid}").json()
    assert shown["result"]["overall"]["category"] == expected["exam"]["category"]
    assert shown["forward"]["state"] == "forwarded"
    # Nothing else comes back: no loop, no second report.
    wait_for(lambda: server.get(f"/studies/{oid}").json().get("IsStable"), 60, "stable study")
    assert len(study_srs(server, study.study_instance_uid)) == 1
    [summary] = study_summaries(server, study.study_instance_uid)
    preview = server.get(f"/instances/{summary}/preview")
    assert preview.status_code == 200 and preview.headers["Content-Type"] == "image/png"
    return sr


def _start_all(processes: list[NodeProcess]) -> None:
    for proc in processes:
        proc.start()


def _stop_all(processes: list[NodeProcess]) -> None:
    for proc in reversed(processes):
        proc.stop()


def run_path(orthanc_factory: Callable[..., OrthancServer], tmp_path: Path, study,
             model_dir: Path | None, broker_url: str) -> dict:
    node_port = free_port()
    server = orthanc_factory(script=SCRIPT,
                             extra={**routing_config(node_port), "StableAge": 5})
    data = tmp_path / "node" / "data"
    env = node_env(data, orthanc_dicom_port=server.dicom_port, model_dir=model_dir,
                   broker_url=broker_url)
    processes = [serve(data, env, port=node_port)]
    if broker_url:
        processes.append(worker(data, env))
    _start_all(processes)
    try:
        send_study(server, study.paths)
        expected = classify_json(study.paths, env)
        return check_sr_matches_classify(server, study, expected, processes)
    finally:
        _stop_all(processes)


def test_orthanc_celery_worker_and_back(orthanc_factory, redis_url: str, tmp_path: Path,
                                        demo_study) -> None:
    """Bundled demo model: the SR equals classify and the synthetic ground truth."""
    sr = run_path(orthanc_factory, tmp_path, demo_study, None, redis_url)
    check_ground_truth(sr, demo_study)


def test_orthanc_embedded_pipeline_and_back(orthanc_factory, tmp_path: Path,
                                            demo_study) -> None:
    sr = run_path(orthanc_factory, tmp_path, demo_study, None, "")
    check_ground_truth(sr, demo_study)


def crash(server: OrthancServer) -> None:
    """SIGKILL Orthanc (a crash, not a clean stop)."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)
    server.proc = None
    server._stdout.close()


def test_node_down_and_orthanc_restarts(orthanc_factory, tmp_path: Path, study,
                                        model_dir: Path) -> None:
    """With a fixed-weight test model (MAMMO_DENSITY_MODEL_DIR): the AI node is down when
    the study arrives; Orthanc restarts while the plugin
    retries; the node comes up; Orthanc crashes right after the forward and stays down
    while the node tries to deliver the SR; ``serve`` restarts; Orthanc restarts. Exactly
    one SR and one summary image end up in the study, the SR with classify's classes."""
    node_port = free_port()
    server = orthanc_factory(script=SCRIPT, extra={
        **routing_config(node_port, RetrySeconds=0.5, MaxRetrySeconds=2, MaxRetries=1000),
        "StableAge": 5})
    data = tmp_path / "node" / "data"
    env = node_env(data, orthanc_dicom_port=server.dicom_port, model_dir=model_dir)
    expected = classify_json(study.paths, env)
    node = serve(data, env, port=node_port)

    send_study(server, study.paths)
    oid = server.find_study(study.study_instance_uid)

    def forward_state() -> dict:
        return server.get(f"/mammo-density/studies/{oid}").json()["forward"] or {}

    wait_for(lambda: forward_state().get("failures", 0) >= 2, 60, "failed forwards",
             [server.tail_log])
    server.restart()
    assert forward_state()["state"] == "retrying"
    node.start()
    try:
        wait_for(lambda: forward_state().get("state") == "forwarded", 60,
                 "the forward after the node came up", [server.tail_log, node.tail])
        crash(server)
        # The node finishes the study while Orthanc is down: its outbox keeps the SR.
        wait_for(lambda: "SR delivery to ORTHANC" in node.tail(200) and
                 "failed (attempt" in node.tail(200), 120, "a failed SR delivery",
                 [node.tail])
        node.stop()  # serve restarts while the PACS is still down: the outbox is on disk
        node.start()
        wait_for(lambda: node.tail(400).count("failed (attempt") >= 3, 60,
                 "failed deliveries after the restart", [node.tail])
        server.start()
        check_sr_matches_classify(server, study, expected, [node])
    finally:
        node.stop()


def test_each_image_forwarded_on_arrival_one_sr(orthanc_factory, tmp_path: Path,
                                                demo_study) -> None:
    """ForwardEachImage, embedded pipeline, the images stored one by one: each reaches the
    node (the plugin's synchronous forward) before the next is stored, and the study still
    gets exactly one SR and one summary image, with classify's classes."""
    node_port = free_port()
    server = orthanc_factory(script=SCRIPT, extra={
        **routing_config(node_port, ForwardEachImage=True), "StableAge": 5})
    data = tmp_path / "node" / "data"
    env = node_env(data, orthanc_dicom_port=server.dicom_port, model_dir=None)
    node = serve(data, env, port=node_port)
    node.start()
    try:
        paths = demo_study.paths
        assert len(paths) == 4
        for n, path in enumerate(paths[:3], start=1):
            send_study(server, [path])
            oid = server.find_study(demo_study.study_instance_uid)

            def sent(n: int = n, oid: str = oid) -> bool:
                forward = server.get(f"/mammo-density/studies/{oid}").json()["forward"]
                return bool(forward) and len(forward["forwarded"]) >= n

            wait_for(sent, 30, f"image {n} forwarded to the node", [server.tail_log])
            forward = server.get(f"/mammo-density/studies/{oid}").json()["forward"]
            assert forward["state"] == "waiting" and len(forward["forwarded"]) == n
            assert not study_srs(server, demo_study.study_instance_uid)
        send_study(server, paths[3:])
        expected = classify_json(paths, env)
        sr = check_sr_matches_classify(server, demo_study, expected, [node])
        check_ground_truth(sr, demo_study)
        status = server.get("/mammo-density/status").json()
        assert status["counters"]["forwarded_early"] == 3
        assert status["counters"]["forwarded_instances"] == 4
    finally:
        node.stop()
