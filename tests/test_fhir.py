"""The FHIR Observation hook: resources validated with fhir.resources (R4B), and delivered
exactly once to a loopback FHIR receiver that is down at first, across a restart of the
delivering process (the durable hook queue of worker/hooks.py)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle

from mammo_density.config import load_settings
from mammo_density.result import StudyResult
from mammo_density.wording import MQSA_SENTENCES
from mammo_density.worker.fhir import build_bundle, observation_resources
from mammo_density.worker.hooks import active_hooks, build_payload, resolve_hook
from tests.services import REPO, free_port
from tests.test_rules import make_result

STUDY = "1.2.826.0.1.3680043.8.498.77"


def _payload(tmp_path: Path, result: StudyResult | None = None, **kw) -> dict:
    settings = load_settings(data_dir=tmp_path / "data", **kw)
    return build_payload(result or make_result(STUDY, right="C", left="B"), settings,
                         patient={"PatientID": "P-42"})


def test_bundle_validates_and_says_what_the_sr_says(tmp_path: Path) -> None:
    bundle = build_bundle(_payload(tmp_path))
    assert isinstance(bundle, Bundle) and bundle.type == "transaction"
    Bundle.model_validate_json(bundle.model_dump_json(exclude_none=True))  # round trip
    entries = [e.resource for e in bundle.entry]
    assert [o.bodySite.coding[0].code for o in entries] == ["76752008", "73056007", "80248007"]
    exam, right, left = entries
    for obs in entries:
        assert obs.status == "preliminary"
        assert (obs.code.coding[0].system, obs.code.coding[0].code) == \
            ("http://snomed.info/sct", "129715009")
        ref = obs.derivedFrom[0]
        assert ref.type == "ImagingStudy"
        assert (ref.identifier.system, ref.identifier.value) == ("urn:dicom:uid",
                                                                 f"urn:oid:{STUDY}")
        assert obs.device.reference == "#model"
        device = obs.contained[0]
        assert device.get_resource_type() == "Device"
        assert device.deviceName[0].name == "demo" and device.version[0].value == "0.1"
        assert obs.subject is None  # hook payloads never carry patient identifiers
        assert obs.effectiveDateTime.isoformat() == "2024-01-05"
        assert "NOT FOR CLINICAL USE" in obs.note[0].text
    assert exam.valueCodeableConcept.coding[0].code == "129718006"  # C
    assert exam.valueCodeableConcept.text == f"BI-RADS C: {MQSA_SENTENCES['C']}"
    assert right.valueCodeableConcept.coding[0].code == "129718006"
    assert left.valueCodeableConcept.coding[0].code == "129717001"  # B
    assert left.valueCodeableConcept.text == f"BI-RADS B: {MQSA_SENTENCES['B']}"
    probs = {c.code.coding[0].code: c.valueQuantity for c in right.component}
    assert set(probs) == {"PROB-A", "PROB-B", "PROB-C", "PROB-D"}
    assert all(q.code == "1" and q.system == "http://unitsofmeasure.org" and 0 <= q.value <= 1
               for q in probs.values())
    flags = {c.code.coding[0].code: c.valueBoolean for c in exam.component
             if c.valueBoolean is not None}
    assert flags == {"DENSE": True, "PARTIAL": False}
    assert [m.reference for m in exam.hasMember] == [bundle.entry[1].fullUrl,
                                                     bundle.entry[2].fullUrl]
    for entry in bundle.entry:
        assert entry.request.method == "POST" and entry.request.url == "Observation"
        assert entry.request.ifNoneExist.startswith("identifier=urn:mammo-density:observation|")
    plain = observation_resources(_payload(tmp_path))
    assert all("subject" not in o for o in plain) and "P-42" not in json.dumps(plain)


def test_not_assessable_has_no_value_but_a_reason(tmp_path: Path) -> None:
    result = StudyResult(study_instance_uid=STUDY, assessable=False, partial=True,
                         missing_views=["L-CC"], warnings=["not assessable: R-CC: too small"])
    bundle = build_bundle(_payload(tmp_path, result))
    [obs] = [e.resource for e in bundle.entry]
    assert obs.valueCodeableConcept is None and obs.dataAbsentReason is not None
    assert "not assessable (R-CC: too small)" in obs.note[0].text
    assert {c.code.coding[0].code: c.valueBoolean for c in obs.component} == {"PARTIAL": True}


def test_hook_is_active_with_a_url(tmp_path: Path) -> None:
    assert callable(resolve_hook("fhir"))
    settings = load_settings(data_dir=tmp_path, fhir_url="http://127.0.0.1:9/fhir",
                             registry_enabled=False)
    assert active_hooks(settings) == ["fhir"]
    assert "fhir" not in active_hooks(load_settings(data_dir=tmp_path))


class FhirReceiver:
    """A minimal FHIR endpoint: takes transaction Bundles at its base URL, validates them
    with fhir.resources and answers a transaction-response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bundles: list[dict] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                bundle = Bundle.model_validate_json(body)  # invalid -> 500, retried
                receiver.bundles.append(json.loads(body))
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                answer = json.dumps({"resourceType": "Bundle", "type": "transaction-response",
                                     "entry": [{"response": {"status": "201 Created"}}
                                               for _ in bundle.entry]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FhirReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


DELIVER = """
import sys, time
from mammo_density.config import load_settings
from mammo_density.result import StudyResult
from mammo_density.worker.hooks import HookQueue, dispatch
settings = load_settings()
mode = sys.argv[1]
if mode == "dispatch":
    dispatch(StudyResult.model_validate_json(open(sys.argv[2]).read()), settings)
queue = HookQueue(settings)
deadline = time.monotonic() + float(sys.argv[3])
while True:
    queue.deliver_due()
    left = queue.pending()
    if not left or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print("pending", len(left), "attempts", [r["attempts"] for r in left])
"""


def _deliver(env: dict, mode: str, result_file: Path, seconds: float) -> str:
    proc = subprocess.run([sys.executable, "-c", DELIVER, mode, str(result_file), str(seconds)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_receiver_down_then_up_gets_it_once_across_a_restart(tmp_path: Path) -> None:
    import os

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_DENSITY_")}
    env.update({"MAMMO_DENSITY_DATA_DIR": str(tmp_path / "data"),
                "MAMMO_DENSITY_FHIR_URL": f"http://127.0.0.1:{port}/fhir",
                "MAMMO_DENSITY_FHIR_TIMEOUT": "2",
                "MAMMO_DENSITY_REGISTRY_ENABLED": "false",
                "MAMMO_DENSITY_HOOK_RETRY_MAX_SECONDS": "0.5"})
    result_file = tmp_path / "result.json"
    result_file.write_text(make_result(STUDY, right="D", left="B").model_dump_json())

    # 1st process: queues the event, the receiver is down: the attempt fails, it exits
    out = _deliver(env, "dispatch", result_file, 1.0)
    assert out.startswith("pending 1"), out
    receiver = FhirReceiver(port).start()
    try:
        # 2nd process (a restart): delivers what the first left behind
        out = _deliver(env, "deliver", result_file, 30.0)
        assert out.startswith("pending 0"), out
        # 3rd process, and the same result dispatched again: nothing new is sent
        out = _deliver(env, "dispatch", result_file, 2.0)
        assert out.startswith("pending 0"), out
        time.sleep(0.5)
    finally:
        receiver.stop()
    assert len(receiver.bundles) == 1
    assert receiver.content_types[0].startswith("application/fhir+json")
    exam = receiver.bundles[0]["entry"][0]["resource"]
    assert exam["valueCodeableConcept"]["coding"][0]["code"] == "129719003"  # D
    assert exam["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{STUDY}"


def test_fhir_url_password_and_token_are_masked(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, fhir_url="https://u:pa55word@fhir.example/r4",
                             fhir_token="t0ken")
    shown = json.dumps(settings.redacted())
    assert "pa55word" not in shown and "t0ken" not in shown
