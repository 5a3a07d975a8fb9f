"""Minimal Orthanc Python plugin used by the fixture tests: proves the plugin runs.

It registers ``/mammo-density-probe`` answering the number of instances Orthanc holds,
computed inside Orthanc through the plugin API.
"""

import json

import orthanc


def probe(output, uri, **request):
    stats = json.loads(orthanc.RestApiGet("/statistics"))
    output.AnswerBuffer(json.dumps({"plugin": "python", "instances": stats["CountInstances"]}),
                        "application/json")


orthanc.RegisterRestCallback("/mammo-density-probe", probe)
