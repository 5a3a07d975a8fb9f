"""Built-in hook ``fhir``: the density result as HL7 FHIR Observations (docs/sr.md).

Active when ``settings.fhir_url`` is set (the FHIR server's base URL). Each result event
becomes one FHIR **transaction Bundle** POSTed to that base URL
(``Content-Type: application/fhir+json``), holding one Observation per assessed breast
and one for the exam:

- ``code`` = SNOMED CT 129715009 "Breast composition"; ``valueCodeableConcept`` = the
  class (PS3.16 CID 6000 SNOMED CT code) with the MQSA sentence as its text;
  ``bodySite`` = right (73056007) / left (80248007) breast, or breast (76752008) for
  the exam; ``status`` = preliminary (an AI result nobody has verified);
- ``component``: the four class probabilities (0-1, UCUM "1", the SR's private codes)
  and, on the exam, dense and partial-study flags; the exam ``hasMember`` its breasts;
- ``derivedFrom`` = the ImagingStudy, by identifier (``urn:dicom:uid`` /
  ``urn:oid:<StudyInstanceUID>``); ``device`` = the model, a contained Device with its
  name and version; ``note`` = the readable sentence (with NOT FOR CLINICAL USE for
  demo models). No ``subject``: hook payloads carry no patient identifiers; the receiver
  finds the patient through the ImagingStudy.

Each entry is a conditional create (``ifNoneExist`` on the Observation's identifier,
built from the event id), so a delivery repeated after a crash creates nothing new on a
conforming server. Resources are built and validated with ``fhir.resources`` (its R4B
models: FHIR R4B changed nothing in Observation, Device or Bundle against R4, and
``fhir.resources`` 8 ships R5 by default and R4B as a subpackage, no plain R4).
Delivery, retries and the durable queue are :mod:`mammo_density.worker.hooks`'.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from mammo_density import __version__
from mammo_density.study import codes
from mammo_density.wording import (
    MQSA_SENTENCES,
    NOT_FOR_CLINICAL_USE,
    probability_label,
    reasons,
    report_sentence,
)

log = logging.getLogger(__name__)

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
#: The SR's private coding scheme 99MDENS (docs/sr.md), as a FHIR system URI.
PRIVATE_SYSTEM = "urn:mammo-density:99MDENS"
IDENTIFIER_SYSTEM = "urn:mammo-density:observation"
_NAMESPACE = uuid.UUID("0e8f4a52-6c0b-4e53-9a0e-6d616d6d6f64")

BREAST_COMPOSITION = {"system": SNOMED, "code": "129715009", "display": "Breast composition"}
CLASS_CODINGS = {cat: {"system": SNOMED, "code": c.sct, "display": c.meaning}
                 for cat, c in codes.DENSITY.items()}  # CID 6000
BODY_SITES = {
    "R": {"system": SNOMED, "code": "73056007", "display": "Right breast structure"},
    "L": {"system": SNOMED, "code": "80248007", "display": "Left breast structure"},
    "exam": {"system": SNOMED, "code": "76752008", "display": "Breast structure"},
}


class FhirError(RuntimeError):
    """The FHIR server did not accept the bundle."""


def _date(value: str | None) -> str | None:
    text = str(value or "")
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return None


def _sentence(payload: dict[str, Any]) -> str:
    exam = payload.get("exam") if payload.get("assessable", True) else None
    breasts = payload.get("breasts") or {}
    used = [f"{v['laterality']}-{v['view']}" for v in payload.get("views") or []]
    model = payload.get("model") or {}
    return report_sentence(
        category=exam["category"] if exam else None,
        sides={s: (breasts[s]["category"] if s in breasts else None) for s in ("R", "L")},
        dense=exam["dense"] if exam else None, used=used,
        missing=list(payload.get("missing_views") or []),
        reasons=reasons(payload.get("warnings") or [], assessable=exam is not None),
        not_for_clinical_use=bool(model.get("not_for_clinical_use")))


def _probabilities(probabilities: dict[str, float]) -> list[dict[str, Any]]:
    return [{
        "code": {"coding": [{"system": PRIVATE_SYSTEM, "code": f"PROB-{c}",
                             "display": probability_label(c)}]},
        "valueQuantity": {"value": round(float(p), 2), "unit": "1", "system": UCUM,
                          "code": "1"},
    } for c, p in sorted(probabilities.items()) if c in CLASS_CODINGS]


def observation_resources(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The Observations of one hook payload as plain FHIR JSON (exam first)."""
    event = str(payload["event_id"])
    study_uid = str(payload["study_instance_uid"])
    model = payload.get("model") or {}
    sentence = _sentence(payload)
    device = {
        "resourceType": "Device", "id": "model",
        "manufacturer": "mammo-density",
        "deviceName": [{"name": str(model.get("name") or "unknown"), "type": "model-name"}],
        "version": [{"value": str(model.get("version") or "unknown")},
                    {"value": f"mammo-density {__version__}"}],
    }
    if model.get("sha256"):
        device["identifier"] = [{"system": "urn:mammo-density:model-sha256",
                                 "value": str(model["sha256"])}]
    if model.get("not_for_clinical_use"):
        device["note"] = [{"text": f"{NOT_FOR_CLINICAL_USE}: demo model"}]
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging",
                                  "display": "Imaging"}]}],
        "code": {"coding": [BREAST_COMPOSITION], "text": "Breast composition (BI-RADS), AI"},
        "derivedFrom": [{"type": "ImagingStudy",
                         "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"},
                         "display": "Mammography study"}],
        "contained": [device],
        "device": {"reference": "#model",
                   "display": f"{model.get('name') or 'unknown model'} "
                              f"{model.get('version') or ''}".strip()},
        "note": [{"text": sentence}],
    }
    if effective := _date(payload.get("study_date")):
        base["effectiveDateTime"] = effective
    if payload.get("event_time"):
        base["issued"] = payload["event_time"]

    def one(key: str, category: str | None, probabilities: dict[str, float] | None,
            extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        obs = json.loads(json.dumps(base))
        obs["identifier"] = [{"system": IDENTIFIER_SYSTEM, "value": f"{event}:{key}"}]
        obs["bodySite"] = {"coding": [BODY_SITES[key]]}
        if category in CLASS_CODINGS:
            obs["valueCodeableConcept"] = {"coding": [CLASS_CODINGS[category]],
                                           "text": f"BI-RADS {category}: "
                                                   f"{MQSA_SENTENCES[category]}"}
        else:
            obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT,
                                                   "code": "unknown"}],
                                       "text": "not assessable"}
        components = _probabilities(probabilities or {}) + (extra or [])
        if components:
            obs["component"] = components
        return obs

    exam = payload.get("exam") if payload.get("assessable", True) else None
    flags = []
    if exam is not None:
        flags.append({"code": {"coding": [{"system": PRIVATE_SYSTEM, "code": "DENSE",
                                           "display": "Dense breast tissue"}]},
                      "valueBoolean": bool(exam.get("dense"))})
    flags.append({"code": {"coding": [{"system": PRIVATE_SYSTEM, "code": "PARTIAL",
                                       "display": "Partial study"}]},
                  "valueBoolean": bool(payload.get("partial")
                                       or payload.get("missing_views"))})
    out = [one("exam", exam["category"] if exam else None,
               exam.get("probabilities") if exam else None, flags)]
    if exam is not None:
        for side in ("R", "L"):
            breast = (payload.get("breasts") or {}).get(side)
            if breast:
                out.append(one(side, breast["category"], breast.get("probabilities")))
    return out


def build_bundle(payload: dict[str, Any]) -> Bundle:
    """The transaction Bundle of one payload, validated by ``fhir.resources`` (R4B)."""
    resources = observation_resources(payload)
    urls = {}
    for obs in resources:
        key = obs["identifier"][0]["value"]
        urls[key] = f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}"
    exam, members = resources[0], resources[1:]
    if members:
        exam["hasMember"] = [{"reference": urls[m["identifier"][0]["value"]]} for m in members]
    entries = []
    for obs in resources:
        Observation.model_validate(obs)  # each resource on its own: clear errors
        key = obs["identifier"][0]["value"]
        entries.append({
            "fullUrl": urls[key],
            "resource": obs,
            "request": {"method": "POST", "url": "Observation",
                        "ifNoneExist": f"identifier={IDENTIFIER_SYSTEM}|{key}"},
        })
    return Bundle.model_validate({"resourceType": "Bundle", "type": "transaction",
                                  "entry": entries})


def _token(settings: Any) -> str:
    value = getattr(settings, "fhir_token", "")
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value or "")


def fhir_hook(payload: dict[str, Any], *, settings: Any) -> None:
    """POST the payload's Observations; raises on anything but a 2xx answer."""
    url = str(getattr(settings, "fhir_url", "") or "").rstrip("/")
    if not url:
        raise FhirError("fhir_url is not set")
    body = build_bundle(payload).model_dump_json(exclude_none=True)
    headers = {"Content-Type": "application/fhir+json; charset=utf-8",
               "Accept": "application/fhir+json",
               "User-Agent": f"mammo-density/{__version__}"}
    if token := _token(settings):
        headers["Authorization"] = f"Bearer {token}"
    timeout = float(getattr(settings, "fhir_timeout", 10.0))
    response = requests.post(url, data=body.encode("utf-8"), headers=headers,
                             timeout=(timeout, timeout), allow_redirects=False)
    if not 200 <= response.status_code < 300:
        raise FhirError(f"HTTP {response.status_code} from the FHIR server")
    log.info("FHIR bundle accepted (event %s)", str(payload.get("event_id", ""))[:12])


__all__ = ["FhirError", "build_bundle", "fhir_hook", "observation_resources"]
