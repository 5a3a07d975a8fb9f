"""mammo-density Orthanc plugin: route screening mammograms to the AI node, show the result.

Loaded by Orthanc's Python plugin (``"PythonScript"`` in the configuration); runs on the
system's Python inside the Orthanc process with the standard library and ``orthanc`` only.
The decisions live in :mod:`mammo_density_routing` (same folder, on ``sys.path`` because
Orthanc puts the script's folder there; a name of its own so that no other module on that
path can shadow it); this module is the thin adapter to Orthanc's callbacks and REST API.

Flow
----
- ``OnStoredInstance``: read the new instance's tags (cheap: already parsed in memory) and
  hand a small record to the worker thread's queue. Nothing else happens in a callback.
- Worker thread (started on ORTHANC_STARTED, stopped on ORTHANC_STOPPED): tracks the
  screening slots of each study; once R-CC, L-CC, R-MLO and L-MLO are stored (or on
  STABLE_STUDY at the latest) it sends the study's mammography images to the AI node with
  ``POST /modalities/{Modality}/store`` (synchronous), and records the outcome in the
  study's metadata. With ``ForwardEachImage`` each screening image of a waiting study is
  sent as soon as it is stored (the study stays waiting; the fourth view goes alone).
  Failures are retried with exponential back-off, logged, listed by
  ``GET /mammo-density/status``, and survive an Orthanc restart (a global property lists
  the studies with unfinished work).
- The density SR that comes back (Modality SR) is never forwarded; an instance already
  sent is never sent again: no loops.
- ``GET /mammo-density/studies/{id}``: the forward state and the density read from the
  study's SR; ``POST /mammo-density/studies/{id}/forward``: send again (``{"Force": true}``
  resends everything). An Orthanc Explorer extension shows the density on the study page.
"""

import heapq
import json
import queue
import threading
import time

import mammo_density_routing as logic
import orthanc

PREFIX = "/mammo-density"
NOT_FOUND_CODES = (7, 17)  # Orthanc "inexistent item", "unknown resource"


def _log_warning(message):
    orthanc.LogWarning("MammoDensity: " + message)


def _log_error(message):
    orthanc.LogError("MammoDensity: " + message)


def _log_info(message):
    orthanc.LogInfo("MammoDensity: " + message)


def _get_json(uri):
    return json.loads(orthanc.RestApiGet(uri))


def _error_text(exc):
    if isinstance(exc, orthanc.OrthancException) and len(exc.args) >= 2:
        return f"Orthanc error {exc.args[0]}: {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"


def _set_metrics(counters, pending):
    """Counters for Orthanc's Prometheus endpoint (/tools/metrics-prometheus)."""
    try:
        for name, value in counters.items():
            orthanc.SetMetricsValue("mammo_density_" + name, float(value),
                                    orthanc.MetricsType.DEFAULT)
        orthanc.SetMetricsValue("mammo_density_pending_studies", float(pending),
                                orthanc.MetricsType.DEFAULT)
    except Exception as exc:  # metrics are a convenience, never a reason to fail
        _log_info(f"metrics not updated: {exc}")


def _is_not_found(exc):
    return (isinstance(exc, orthanc.OrthancException) and bool(exc.args)
            and exc.args[0] in NOT_FOUND_CODES)


class Router:
    """The worker thread and everything it owns. Only this thread writes study state."""

    def __init__(self, settings, metadata_name):
        self.settings = settings
        self.metadata = metadata_name
        self.events = queue.Queue()
        self.slots = logic.StudySlots()
        self.study_of_uid = {}   # StudyInstanceUID -> Orthanc study ID (studies arriving)
        self.timers = []          # heap of (due, seq, study_id, reason)
        self._seq = 0
        self.thread = None
        self.lock = threading.Lock()
        self.busy_with = None
        self.counters = {"forwarded_studies": 0, "forwarded_instances": 0,
                         "forwarded_early": 0, "failed_attempts": 0, "given_up": 0}
        self.last_error = ""
        self.started_at = None

    # --- life cycle ------------------------------------------------------------------
    def start(self):
        if self.thread is not None and self.thread.is_alive():
            return
        self.started_at = time.time()
        self.thread = threading.Thread(target=self._run, name="mammo-density-router",
                                       daemon=True)
        self.thread.start()
        self.events.put(("recover",))

    def stop(self, timeout=10.0):
        if self.thread is None:
            return
        self.events.put(("stop",))
        self.thread.join(timeout)
        self.thread = None

    def alive(self):
        return self.thread is not None and self.thread.is_alive()

    # --- called from Orthanc's callbacks: only enqueue -------------------------------
    def instance_stored(self, info):
        self.events.put(("instance", info))

    def study_stable(self, study_id):
        self.events.put(("stable", study_id))

    def request_forward(self, study_id, force):
        self.events.put(("forward", study_id, force))

    # --- the thread ------------------------------------------------------------------
    def _run(self):
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.time())
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                event = None
            if event is not None and event[0] == "stop":
                return
            try:
                if event is not None:
                    self._handle(event)
                self._run_due_timers()
                with self.lock:
                    counters = dict(self.counters)
                _set_metrics(counters, len(self.read_lists()["pending"]))
            except Exception as exc:  # keep routing whatever one study does
                self.last_error = _error_text(exc)
                _log_error("unexpected error in the router: " + self.last_error)

    def _handle(self, event):
        kind = event[0]
        if kind == "instance":
            self._on_instance(event[1])
        elif kind == "stable":
            self._on_stable(event[1])
        elif kind == "forward":
            self._forward(event[1], "manual", force=event[2])
        elif kind == "recover":
            self._recover()

    def _schedule(self, due, study_id, reason):
        self._seq += 1
        heapq.heappush(self.timers, (due, self._seq, study_id, reason))

    def _run_due_timers(self):
        now = time.time()
        while self.timers and self.timers[0][0] <= now:
            _, _, study_id, reason = heapq.heappop(self.timers)
            state, _ = self._read_state(study_id)
            if state is not None and state["state"] in logic.UNFINISHED:
                self._forward(study_id, reason)
            now = time.time()

    # --- persistent state ------------------------------------------------------------
    def _read_state(self, study_id):
        """(state, stored): the study's state (a fresh one if it has none, ``stored``
        False then), or (None, False) when the study is gone."""
        try:
            raw = orthanc.RestApiGet(f"/studies/{study_id}/metadata/{self.metadata}")
        except orthanc.OrthancException as exc:
            if not _is_not_found(exc):
                raise
            try:
                orthanc.RestApiGet(f"/studies/{study_id}")
            except orthanc.OrthancException as exc2:
                if _is_not_found(exc2):
                    return None, False
                raise
            return logic.new_state(), False
        return logic.load_state(raw), True

    def _write_state(self, study_id, state):
        orthanc.RestApiPut(f"/studies/{study_id}/metadata/{self.metadata}",
                           logic.dump_state(state))
        self._update_lists(study_id, state["state"])

    def read_lists(self):
        return logic.load_pending(
            orthanc.GetGlobalProperty(self.settings.global_property, ""))

    def _update_lists(self, study_id, state_name):
        lists = self.read_lists()
        pending, failed = lists["pending"], lists["failed"]
        changed = False
        if state_name in logic.UNFINISHED:
            if study_id not in pending:
                pending.append(study_id)
                changed = True
        elif study_id in pending:
            pending.remove(study_id)
            changed = True
        if state_name == logic.FAILED:
            if study_id not in failed:
                failed.append(study_id)
                del failed[:-200]
                changed = True
        elif study_id in failed:
            failed.remove(study_id)
            changed = True
        if changed:
            orthanc.SetGlobalProperty(self.settings.global_property,
                                      json.dumps({"pending": pending, "failed": failed}))


    # --- events ----------------------------------------------------------------------
    def _on_instance(self, info):
        study_id = self.study_of_uid.get(info.study_uid)
        if study_id is None:
            study_id = _get_json(f"/instances/{info.instance_id}/study")["ID"]
            self.study_of_uid[info.study_uid] = study_id
        state, stored = self._read_state(study_id)
        if state is None:
            return
        if info.instance_id in state["forwarded"]:
            return  # the same instance stored again: already sent
        if state["state"] in (logic.FORWARDED, logic.FAILED) or not stored:
            # New images for the study: send them on the four views or at stable.
            state["state"] = logic.WAITING
            state["failures"] = 0
            self._write_state(study_id, state)
        complete = self.slots.add(info.study_uid, info.slot)
        if state["state"] != logic.WAITING:
            return  # retrying: its timer sends everything left
        if complete and self.settings.forward_on_four_views:
            self._forward(study_id, "four-views")
        elif self.settings.forward_each_image and info.slot:
            self._forward_early(study_id, state, info.instance_id)

    def _on_stable(self, study_id):
        self._forget(study_id)
        state, _ = self._read_state(study_id)
        if state is None or state["state"] == logic.FAILED:
            return
        if state["state"] == logic.RETRYING and (state["next_try"] or 0) > time.time():
            return  # its timer will send it
        self._forward(study_id, "stable")

    def _forget(self, study_id):
        for uid, sid in list(self.study_of_uid.items()):
            if sid == study_id:
                del self.study_of_uid[uid]
                self.slots.forget(uid)

    def _recover(self):
        lists = self.read_lists()
        now = time.time()
        for study_id in list(lists["pending"]):
            state, _ = self._read_state(study_id)
            if state is None or state["state"] not in logic.UNFINISHED:
                self._update_lists(study_id, state["state"] if state else logic.FORWARDED)
                continue
            if state["state"] == logic.WAITING:
                due = now + self.settings.recovery_delay_seconds
            elif state["state"] == logic.RETRYING:
                due = max(now, float(state["next_try"] or now))
            else:
                due = now
            self._schedule(due, study_id, "recovery")
        if lists["pending"]:
            _log_warning(f"{len(lists['pending'])} studies with unfinished forwards after "
                         "start-up; resuming")

    # --- the forward -----------------------------------------------------------------
    def _instances(self, study_id):
        """Instances of the study as dicts with ID, SOPClassUID, Modality."""
        wanted = logic.forwardable_classes(self.settings)
        out = []
        for series in _get_json(f"/studies/{study_id}/series"):
            modality = str(series.get("MainDicomTags", {}).get("Modality", "")).upper()
            if modality not in ("MG", "") and \
                    not (modality == "SR" and logic.XRAY_DOSE_SR in wanted):
                continue
            for instance_id in series.get("Instances", []):
                try:
                    sop_class = orthanc.RestApiGet(
                        f"/instances/{instance_id}/metadata/SopClassUid").decode()
                except orthanc.OrthancException:
                    tags = _get_json(f"/instances/{instance_id}/simplified-tags")
                    sop_class = str(tags.get("SOPClassUID", ""))
                out.append({"ID": instance_id, "SOPClassUID": sop_class,
                            "Modality": modality})
        return out

    def _forward(self, study_id, reason, force=False):
        state, had_state = self._read_state(study_id)
        if state is None:
            return
        if force:
            state["forwarded"] = []
            state["failures"] = 0
        todo = logic.to_forward(self._instances(study_id), state["forwarded"], self.settings)
        if not todo:
            if had_state and state["state"] != logic.FORWARDED and state["forwarded"]:
                state["state"] = logic.FORWARDED
                self._write_state(study_id, state)
            elif had_state and not state["forwarded"] and state["state"] in logic.UNFINISHED:
                state["state"] = logic.FORWARDED  # nothing mammographic to send
                self._write_state(study_id, state)
            return
        with self.lock:
            self.busy_with = study_id
        started = time.time()
        try:
            self._store(todo)
        except Exception as exc:
            self._failed(study_id, state, _error_text(exc))
            return
        logic.after_success(state, todo, reason, time.time())
        self._write_state(study_id, state)
        with self.lock:
            self.busy_with = None
            self.counters["forwarded_studies"] += 1
            self.counters["forwarded_instances"] += len(todo)
        _log_warning(f"study {study_id}: {len(todo)} instance(s) sent to "
                     f"{self.settings.modality} ({reason}) in {time.time() - started:.2f} s")

    def _store(self, todo):
        """C-STORE the instances to the AI node (synchronous); raises on any refusal."""
        body = {"Resources": todo, "Synchronous": True,
                "Timeout": self.settings.store_timeout_seconds}
        answer = json.loads(orthanc.RestApiPost(
            f"/modalities/{self.settings.modality}/store", json.dumps(body)))
        failed = int(answer.get("FailedInstancesCount", 0) or 0)
        if failed:
            raise RuntimeError(f"{failed} of {len(todo)} instances refused by "
                               f"{self.settings.modality}")

    def _failed(self, study_id, state, error):
        """A forward (the study's or one image's) failed: retry later or give up."""
        logic.after_failure(state, error, self.settings, time.time())
        self._write_state(study_id, state)
        with self.lock:
            self.busy_with = None
            self.counters["failed_attempts"] += 1
            self.last_error = error
        if state["state"] == logic.FAILED:
            with self.lock:
                self.counters["given_up"] += 1
            _log_error(f"study {study_id}: forward to {self.settings.modality} failed "
                       f"{state['failures']} times, giving up ({error}); re-queue with "
                       f"POST {PREFIX}/studies/{study_id}/forward")
        else:
            wait = state["next_try"] - time.time()
            _log_warning(f"study {study_id}: forward to {self.settings.modality} failed "
                         f"(attempt {state['failures']}: {error}); next try in {wait:.0f} s")
            self._schedule(state["next_try"], study_id, "retry")

    def _forward_early(self, study_id, state, instance_id):
        """``ForwardEachImage``: send one screening image of a waiting study now; the study
        stays waiting (four views or STABLE_STUDY send the rest). A failure counts as the
        study's: it retries everything left with back-off."""
        with self.lock:
            self.busy_with = study_id
        started = time.time()
        try:
            self._store([instance_id])
        except Exception as exc:
            self._failed(study_id, state, _error_text(exc))
            return
        logic.after_early_success(state, [instance_id], time.time())
        self._write_state(study_id, state)
        with self.lock:
            self.busy_with = None
            self.counters["forwarded_instances"] += 1
            self.counters["forwarded_early"] += 1
        _log_info(f"study {study_id}: instance {instance_id} sent to "
                  f"{self.settings.modality} (each-image) in {time.time() - started:.2f} s")

    # --- status ------------------------------------------------------------------------
    def status(self):
        lists = self.read_lists()
        studies = {}
        for key in ("pending", "failed"):
            rows = []
            for study_id in lists[key]:
                try:
                    raw = orthanc.RestApiGet(f"/studies/{study_id}/metadata/{self.metadata}")
                except orthanc.OrthancException:
                    continue
                state = logic.load_state(raw)
                rows.append({"study": study_id, "state": state["state"],
                             "failures": state["failures"],
                             "last_error": state["last_error"],
                             "next_try": state["next_try"]})
            studies[key] = rows
        with self.lock:
            counters = dict(self.counters)
            busy = self.busy_with
            last_error = self.last_error
        return {
            "plugin": "mammo-density",
            "router_alive": self.alive(),
            "queued_events": self.events.qsize(),
            "scheduled_retries": len(self.timers),
            "busy_with": busy,
            "counters": counters,
            "last_error": last_error,
            "pending": studies["pending"],
            "failed": studies["failed"],
            "settings": self.settings.as_dict(),
            "backoff_schedule_s": logic.backoff_schedule(self.settings)[:8],
        }


def _load_settings():
    config = json.loads(orthanc.GetConfiguration())
    settings = logic.parse_settings(config)
    metadata = settings.metadata
    modalities = config.get("DicomModalities") or {}
    if settings.modality not in modalities:
        _log_warning(f"Modality {settings.modality!r} is not in DicomModalities of the "
                     "configuration file; declare it through the REST API (/modalities) "
                     "or every forward will fail")
    return settings, metadata


SETTINGS, METADATA = _load_settings()
ROUTER = Router(SETTINGS, METADATA)


# --- callbacks ---------------------------------------------------------------------------


def on_stored_instance(dicom, instance_id):
    try:
        tags = json.loads(dicom.GetInstanceSimplifiedJson())
        info = logic.instance_info(instance_id, tags)
        if logic.is_forwardable(info.sop_class_uid, info.modality, SETTINGS):
            ROUTER.instance_stored(info)
    except Exception as exc:  # never disturb the store itself
        _log_error(f"could not read stored instance {instance_id}: {exc}")


def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        ROUTER.study_stable(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        ROUTER.start()
        _log_warning(f"routing mammography studies to modality {SETTINGS.modality!r} "
                     f"(forward on four views: {SETTINGS.forward_on_four_views}, "
                     f"each image: {SETTINGS.forward_each_image})")
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        ROUTER.stop()


# --- REST ----------------------------------------------------------------------------------


def _answer(output, data, status=200):
    body = json.dumps(data, indent=2, sort_keys=True)
    if status == 200:
        output.AnswerBuffer(body, "application/json")
    else:
        output.SendHttpStatus(status, body, len(body.encode()))


def rest_status(output, uri, **request):
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    _answer(output, ROUTER.status())


def study_result(study_id):
    """Forward state and density result of one study (None if the study is unknown)."""
    try:
        study = _get_json(f"/studies/{study_id}")
    except orthanc.OrthancException as exc:
        if _is_not_found(exc):
            return None
        raise
    try:
        raw = orthanc.RestApiGet(f"/studies/{study_id}/metadata/{METADATA}")
        forward = logic.load_state(raw)
    except orthanc.OrthancException:
        forward = None
    results = []
    for series in _get_json(f"/studies/{study_id}/series"):
        if str(series.get("MainDicomTags", {}).get("Modality", "")).upper() != "SR":
            continue
        for instance_id in series.get("Instances", []):
            tags = _get_json(f"/instances/{instance_id}/tags?simplify")
            parsed = logic.parse_density_sr(tags)
            if parsed is not None:
                parsed["instance"] = instance_id
                results.append(parsed)
    return {
        "study": study_id,
        "study_instance_uid": study.get("MainDicomTags", {}).get("StudyInstanceUID", ""),
        "forward": forward,
        "result": logic.latest_result(results),
        "reports": len(results),
    }


def rest_study(output, uri, **request):
    study_id = request["groups"][0]
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    data = study_result(study_id)
    if data is None:
        _answer(output, {"error": "unknown study", "study": study_id}, 404)
        return
    _answer(output, data)


def rest_forward(output, uri, **request):
    study_id = request["groups"][0]
    if request.get("method") != "POST":
        output.SendMethodNotAllowed("POST")
        return
    force = False
    body = request.get("body") or b""
    if body.strip():
        try:
            options = json.loads(body)
        except ValueError:
            _answer(output, {"error": "body must be JSON, e.g. {\"Force\": true}"}, 400)
            return
        force = bool(isinstance(options, dict) and options.get("Force"))
    try:
        orthanc.RestApiGet(f"/studies/{study_id}")
    except orthanc.OrthancException:
        _answer(output, {"error": "unknown study", "study": study_id}, 404)
        return
    ROUTER.request_forward(study_id, force)
    _answer(output, {"study": study_id, "queued": True, "force": force})


EXPLORER_JS = """
// mammo-density: breast density of the study, read from its density SR.
$('#study').live('pagebeforecreate', function() {
  if ($('#mammo-density-box').length == 0) {
    var box = $('<div>').attr('id', 'mammo-density-box')
      .css({'margin': '1em 0', 'padding': '0.5em 1em', 'border': '1px solid #ccc',
            'border-radius': '0.5em'});
    box.append($('<h3>').text('Breast density (mammo-density)'));
    box.append($('<p>').attr('id', 'mammo-density-text').text('...'));
    box.insertAfter($('#study-info'));
  }
});
$('#study').live('pagebeforeshow', function() {
  var studyId = $.mobile.pageData.uuid;
  var text = $('#mammo-density-text');
  text.text('...');
  $.ajax({
    url: '../mammo-density/studies/' + studyId,
    dataType: 'json',
    cache: false,
    success: function(s) {
      var r = s.result;
      if (r && r.overall) {
        var line = r.overall.text || ('BI-RADS ' + r.overall.category);
        if (r.not_for_clinical_use && line.toUpperCase().indexOf('NOT FOR CLINICAL USE') < 0) {
          line += ' [demo model: NOT FOR CLINICAL USE]';
        }
        text.text(line);
      } else if (s.forward && s.forward.state) {
        text.text('No density report yet (forward: ' + s.forward.state +
                  (s.forward.last_error ? ', ' + s.forward.last_error : '') + ')');
      } else {
        text.text('Not a mammography study routed to mammo-density.');
      }
    },
    error: function() { text.text('mammo-density: no answer'); }
  });
});
"""


orthanc.RegisterOnStoredInstanceCallback(on_stored_instance)
orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback(PREFIX + "/status", rest_status)
orthanc.RegisterRestCallback(PREFIX + "/studies/([^/]+)", rest_study)
orthanc.RegisterRestCallback(PREFIX + "/studies/([^/]+)/forward", rest_forward)
if SETTINGS.explorer:
    orthanc.ExtendOrthancExplorer(EXPLORER_JS)
