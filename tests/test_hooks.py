"""Hooks: durable queue, signed webhook to a real loopback receiver, registry, dose report."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from mammo_density.config import ConfigError, load_settings
from mammo_density.result import BreastResult, ExamResult, ModelRef, StudyResult
from mammo_density.worker.dose import extract_dose
from mammo_density.worker.hooks import (
    HookQueue,
    active_hooks,
    build_payload,
    dispatch,
    event_id,
    resolve_hook,
)
from mammo_density.worker.registry import Registry
from mammo_density.worker.webhook import EVENT_HEADER, SIGNATURE_HEADER, verify_signature
from tests.services import PostgresServer, free_port
from tests.test_rules import make_result

SECRET = "s3cret-shared-with-the-programme"


class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies signatures and counts event ids."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: Counter[str] = Counter()
        self.bad_signatures = 0
        self.payloads: dict[str, dict] = {}
        self._server: http.server.HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not verify_signature(body, self.headers.get(SIGNATURE_HEADER), SECRET):
                    outer.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                payload = json.loads(body)
                eid = self.headers.get(EVENT_HEADER)
                assert eid == payload["event_id"]
                outer.events[eid] += 1
                outer.payloads[eid] = payload
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.HTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None


@pytest.fixture
def receiver() -> Receiver:
    r = Receiver(free_port()).start()
    yield r
    r.stop()


def _settings(tmp_path: Path, **kw):
    kw.setdefault("hook_retry_max_seconds", 0.3)
    return load_settings(data_dir=tmp_path / "data", **kw)


def _until(predicate: Callable[[], bool], step: Callable[[], object], timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step()
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_builtin_hooks_resolve_and_default_set(tmp_path):
    assert callable(resolve_hook("webhook")) and callable(resolve_hook("registry"))
    assert active_hooks(_settings(tmp_path)) == ["registry"]
    s = _settings(tmp_path, webhook_url="http://127.0.0.1:9/x", hooks="pkg.mod:fn",
                  registry_enabled=False)
    assert active_hooks(s) == ["webhook", "pkg.mod:fn"]
    with pytest.raises(LookupError):
        resolve_hook("no-such-hook")


def test_event_id_stable_and_patient_ids_opt_in(tmp_path):
    r1 = make_result(revision=1)
    assert event_id(r1) == event_id(make_result(revision=1))
    assert event_id(r1) != event_id(make_result(revision=2))
    assert event_id(r1) != event_id(make_result(model_sha="cd" * 32))
    patient = {"PatientID": "P123", "PatientName": "Doe^Jane"}
    off = build_payload(r1, _settings(tmp_path), patient=patient)
    assert "patient" not in off and "P123" not in json.dumps(off)
    for key in ("exam", "breasts", "dose", "recommendations", "model", "study_instance_uid"):
        assert key in off
    # Patient identifiers in hook payloads are not supported: asking for them is an error.
    with pytest.raises(ConfigError, match="hooks_include_patient_ids"):
        _settings(tmp_path, hooks_include_patient_ids=True)


def test_payload_carries_the_mqsa_sentence_beside_each_category(tmp_path):
    from mammo_density.wording import MQSA_SENTENCES

    payload = build_payload(make_result(right="D"), _settings(tmp_path))
    exam = payload["exam"]
    assert exam["mqsa_sentence"] == MQSA_SENTENCES[exam["category"]]
    assert exam["mqsa_sentence"].startswith("The breasts are extremely dense")
    for breast in payload["breasts"].values():
        assert breast["mqsa_sentence"] == MQSA_SENTENCES[breast["category"]]


def test_webhook_signed_queued_while_down_and_delivered_once_after_restart(tmp_path, receiver):
    settings = _settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET,
                         webhook_timeout=2.0)
    first = make_result("1.2.3.1", right="D")
    first.recommendations = []
    dispatch(first, settings)
    queue = HookQueue(settings)
    _until(lambda: receiver.events, queue.deliver_due)
    eid1 = event_id(first)
    assert receiver.events == Counter({eid1: 1}) and receiver.bad_signatures == 0
    assert receiver.payloads[eid1]["exam"]["category"] == "D"

    # Receiver down: events queue, nothing is lost.
    receiver.stop()
    later = [make_result(f"1.2.3.{i}") for i in (2, 3)]
    for r in later:
        dispatch(r, settings)
    for _ in range(3):
        queue.deliver_due()
        time.sleep(0.35)
    pending = [p for p in queue.pending() if p["hook"] == "webhook"]
    assert sorted(p["event_id"] for p in pending) == sorted(event_id(r) for r in later)
    assert all(p["attempts"] >= 1 and p["last_error"] for p in pending)

    # Dispatching the same event again adds nothing (idempotent per event id).
    dispatch(later[0], settings)
    assert len([p for p in HookQueue(settings).pending() if p["hook"] == "webhook"]) == 2

    # "Restart": a new queue object on the same data dir, receiver back on the same port.
    del queue
    receiver.start()
    queue2 = HookQueue(settings)
    _until(lambda: not queue2.pending(), queue2.deliver_due)
    for _ in range(3):  # more rounds must not send anything twice
        queue2.deliver_due()
    assert receiver.events == Counter({eid1: 1, **{event_id(r): 1 for r in later}})
    assert receiver.bad_signatures == 0


def test_wrong_secret_is_rejected_and_retried(tmp_path, receiver):
    settings = _settings(tmp_path, webhook_url=receiver.url, webhook_secret="wrong")
    dispatch(make_result("1.2.9"), settings)
    queue = HookQueue(settings)
    queue.deliver_due()
    assert receiver.bad_signatures == 1 and not receiver.events
    [row] = [p for p in queue.pending() if p["hook"] == "webhook"]
    assert "401" in row["last_error"]


CALLS: list[dict] = []


def _recording_hook(payload: dict) -> None:
    CALLS.append(payload)


def _raising_hook(payload: dict) -> None:
    raise RuntimeError("the programme's adapter is broken")


def test_failing_hook_blocks_nothing(tmp_path):
    CALLS.clear()
    settings = _settings(tmp_path, hooks="tests.test_hooks:_raising_hook,"
                         "tests.test_hooks:_recording_hook,not-installed-hook")
    result = make_result("1.2.4")
    dispatch(result, settings)  # must not raise, unknown hook skipped
    queue = HookQueue(settings)
    assert queue.deliver_due() == 2  # registry + recording hook
    assert [c["event_id"] for c in CALLS] == [event_id(result)]
    [row] = queue.pending()
    assert row["hook"] == "tests.test_hooks:_raising_hook" and row["attempts"] == 1
    assert "RuntimeError" in row["last_error"]
    assert len(Registry(settings).rows()) == 1


def test_a_workers_event_gets_the_listeners_hooks(tmp_path):
    """A Celery worker's pipeline holds its events; ``serve``'s queue routes them to the
    hooks of serve's settings. What the worker's environment says (here: a recording
    hook and the registry) decides nothing, and a held event is routed once."""
    from mammo_density.commands.compose import node_pipeline
    from mammo_density.worker.hooks import UNROUTED

    CALLS.clear()
    worker = _settings(tmp_path, hooks="tests.test_hooks:_recording_hook",
                       registry_enabled=True)
    listener = _settings(tmp_path, registry_enabled=True)  # the registry only
    pipeline = node_pipeline(worker, owns_outbox=False)
    result = make_result("1.2.77")
    pipeline.hooks.dispatch(result)
    pipeline.hooks.dispatch(result)  # the same event again (a redelivered task)
    queue = HookQueue(listener)
    assert [(p["event_id"], p["hook"]) for p in queue.pending()] == \
        [(event_id(result), UNROUTED)]
    from mammo_density.commands.status import _pending_hooks

    assert [p["hook"] for p in _pending_hooks(listener)] == [UNROUTED]  # `status`, read-only
    assert queue.deliver_due() == 1  # routed, then delivered: the registry
    assert not CALLS and not queue.pending()
    assert [r["study_uid"] for r in Registry(listener).rows()] == ["1.2.77"]
    assert queue.route_new() == 0 and queue.deliver_due() == 0  # nothing twice
    # serve's own (embedded) pipeline routes at once, with its settings
    node_pipeline(listener, owns_outbox=True).hooks.dispatch(make_result("1.2.78"))
    assert {p["hook"] for p in queue.pending()} == {"registry"}


def test_dispatch_never_raises(tmp_path, caplog):
    """The queue cannot be opened (data_dir is a file): dispatch returns, and says why
    in the log; a dispatch that silently did nothing, or raised, fails this test."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    settings = load_settings(data_dir=blocker, registry_enabled=True)
    with caplog.at_level("ERROR", logger="mammo_density.worker.hooks"):
        assert dispatch(make_result(), settings) is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("hooks could not be queued" in r.getMessage() for r in errors), \
        [r.getMessage() for r in caplog.records]
    assert any(r.exc_info for r in errors)  # the cause is in the log
    assert blocker.read_text() == "x"


def test_run_forever_delivers_in_background(tmp_path):
    CALLS.clear()
    settings = _settings(tmp_path, hooks="tests.test_hooks:_recording_hook",
                         registry_enabled=False)
    stop = threading.Event()
    thread = threading.Thread(target=HookQueue(settings).run_forever, args=(stop, 0.1))
    thread.start()
    try:
        dispatch(make_result("1.2.5"), settings)
        deadline = time.monotonic() + 15
        while not CALLS and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert len(CALLS) == 1 and not thread.is_alive()


def _synthetic_results(tmp_path: Path) -> list[StudyResult]:
    """Studies from the synth generator: dose from their headers, density from the truth."""
    from mammo_density.synth.generate import generate

    records = generate(tmp_path / "synth", studies=4, seed=3, size="small")
    results = []
    for rec in records:
        headers = [pydicom.dcmread(i.path, stop_before_pixels=True) for i in rec.images]
        cats = rec.breast_density
        exam_cat = max(cats.values(), key="ABCD".index)
        probs = {c: (0.7 if c == exam_cat else 0.1) for c in "ABCD"}
        results.append(StudyResult(
            study_instance_uid=rec.study_instance_uid,
            study_date=str(headers[0].get("StudyDate", "")),
            exam=ExamResult(category=exam_cat, probabilities=probs, dense=exam_cat in "CD",
                            p_dense=probs["C"] + probs["D"], dense_source="birads4"),
            breasts={s: BreastResult(category=c, probabilities=probs) for s, c in cats.items()},
            model=ModelRef(name="demo", version="0.1", sha256="ef" * 32),
            dose=extract_dose(headers),
        ))
    return results


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def registry_url(request) -> str:
    """The registry's database: the default SQLite file (empty URL), or a new database
    in a real PostgreSQL server."""
    if request.param == "sqlite":
        return ""
    import uuid

    return request.getfixturevalue("postgres").create_database(f"t_{uuid.uuid4().hex[:12]}")


def test_registry_rows_for_synthetic_batch_and_dose_report(tmp_path, registry_url,
                                                          monkeypatch):
    from mammo_density.cli import main
    from mammo_density.worker.screening_rules import evaluate

    settings = _settings(tmp_path, registry_url=registry_url)
    monkeypatch.setenv("MAMMO_DENSITY_REGISTRY_URL", registry_url)  # for dose-report
    assert Registry(settings).kind == ("postgresql" if registry_url else "sqlite")
    results = _synthetic_results(tmp_path)
    for r in results:
        r.recommendations = evaluate(r, settings)
        dispatch(r, settings)
    queue = HookQueue(settings)
    assert queue.deliver_due() == len(results)
    rows = {row["study_uid"]: row for row in Registry(settings).rows()}
    assert len(rows) == len(results)
    for r in results:
        row = rows[r.study_instance_uid]
        assert row["category_exam"] == r.exam.category
        assert row["category_r"] == r.breasts["R"].category
        assert row["dense"] == int(r.exam.dense)
        assert row["agd_r_mgy"] == pytest.approx(r.dose.breasts["R"].agd_mgy)
        assert row["agd_total_mgy"] == pytest.approx(r.dose.total_agd_mgy)
        assert row["agd_source"] == "headers" and row["exposures"] == 4
        assert row["thickness_l_mm"] == pytest.approx(r.dose.breasts["L"].mean_thickness_mm)
        assert row["model_version"] == "0.1" and row["exam_date"] == r.study_date
        assert row["kvp"] and row["kvp"] > 15
        assert json.loads(row["recommendations"]) == [
            f"{x.rule}: {x.text}" for x in r.recommendations]

    # Newest revision wins; a late older revision does not overwrite it.
    uid = results[0].study_instance_uid
    newer = results[0].model_copy(update={"revision": 3})
    newer.exam = newer.exam.model_copy(update={"category": "A"})
    older = results[0].model_copy(update={"revision": 2})
    dispatch(newer, settings)
    dispatch(older, settings)
    queue.deliver_due()
    row = {r["study_uid"]: r for r in Registry(settings).rows()}[uid]
    assert (row["revision"], row["category_exam"]) == (3, "A")

    csv_path, png_path = tmp_path / "out" / "dose.csv", tmp_path / "out" / "dose.png"
    rc = main(["dose-report", "--data-dir", str(settings.data_dir), "--out", str(csv_path),
               "--png", str(png_path)])
    assert rc == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("study_uid,revision,exam_date") and len(lines) == 1 + len(results)

    import matplotlib.image

    image = matplotlib.image.imread(png_path)
    assert image.shape[0] == 450 and image.shape[1] == 700 and image.shape[2] in (3, 4)


_DELIVERER = """
import threading, signal
from mammo_density.config import load_settings
from mammo_density.worker.hooks import HookQueue
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
HookQueue(load_settings()).run_forever(stop, 0.1)
"""


def test_delivery_survives_a_process_restart(tmp_path):
    """The delivering process (serve's hook thread) is killed while the receiver is down;
    a new process delivers every queued event exactly once when the receiver is back."""
    import os
    import subprocess
    import sys

    port = free_port()
    receiver = Receiver(port)
    env = dict(os.environ,
               MAMMO_DENSITY_DATA_DIR=str(tmp_path / "data"),
               MAMMO_DENSITY_WEBHOOK_URL=receiver.url,
               MAMMO_DENSITY_WEBHOOK_SECRET=SECRET,
               MAMMO_DENSITY_WEBHOOK_TIMEOUT="2",
               MAMMO_DENSITY_HOOK_RETRY_MAX_SECONDS="0.3",
               MAMMO_DENSITY_REGISTRY_ENABLED="false")
    env.pop("MAMMO_DENSITY_CONFIG", None)
    settings = _settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET,
                         registry_enabled=False)
    results = [make_result(f"1.2.7.{i}") for i in range(3)]
    for r in results:
        dispatch(r, settings)
    queue = HookQueue(settings)

    first = subprocess.Popen([sys.executable, "-c", _DELIVERER], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(p["attempts"] >= 2 for p in queue.pending()):
                break
            time.sleep(0.1)
        assert len(queue.pending()) == 3 and all(p["attempts"] >= 2 for p in queue.pending())
    finally:
        first.kill()
        first.wait(10)

    receiver.start()
    second = subprocess.Popen([sys.executable, "-c", _DELIVERER], env=env)
    try:
        deadline = time.monotonic() + 30
        while queue.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a few more rounds: nothing may arrive twice
    finally:
        second.terminate()
        second.wait(10)
        receiver.stop()
    assert second.returncode == 0  # SIGTERM: clean stop
    assert receiver.events == Counter({event_id(r): 1 for r in results})
    assert receiver.bad_signatures == 0
