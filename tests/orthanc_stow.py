"""Orthanc Python plugin for the outbox tests: a STOW-RS endpoint (``POST /dicom-web/studies``).

Debian's Orthanc ships without the DICOMweb plugin; this script gives the test Orthanc a
real STOW-RS service: it parses the multipart/related request, stores each part through
Orthanc's own REST API and answers the PS3.18 store response (dicom+json).
"""

import email.parser
import json

import orthanc


def _parts(content_type, body):
    raw = b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    message = email.parser.BytesParser().parsebytes(raw)
    if not message.is_multipart():
        return []
    return [part.get_payload(decode=True) for part in message.get_payload()]


def stow(output, uri, **request):
    if request.get("method") != "POST":
        output.SendMethodNotAllowed("POST")
        return
    headers = {k.lower(): v for k, v in request.get("headers", {}).items()}
    content_type = headers.get("content-type", "")
    if not content_type.startswith("multipart/related"):
        output.SendHttpStatusCode(415)
        return
    stored, failed = [], []
    for part in _parts(content_type, request.get("body", b"")):
        try:
            answer = json.loads(orthanc.RestApiPost("/instances", part))
            path = "/instances/" + answer["ID"] + "/simplified-tags"
            tags = json.loads(orthanc.RestApiGet(path))
            stored.append({
                "00081150": {"vr": "UI", "Value": [tags["SOPClassUID"]]},
                "00081155": {"vr": "UI", "Value": [tags["SOPInstanceUID"]]},
            })
        except Exception:  # reported to the client as a failed instance
            failed.append({"00081197": {"vr": "US", "Value": [0xC000]}})
    response = {}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    output.AnswerBuffer(json.dumps(response), "application/dicom+json")


orthanc.RegisterRestCallback("/dicom-web/studies", stow)
