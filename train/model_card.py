"""MODEL_CARD.md for a registry entry: what the model is, how it was made, how it scores."""

from __future__ import annotations

from pathlib import Path

from mammo_density.manifest import ModelManifest

CARD_NAME = "MODEL_CARD.md"


def _pct(v: object) -> str:
    return f"{100 * float(v):.1f}%" if isinstance(v, int | float) else "-"


def render(manifest: ModelManifest, evaluation: dict | None = None,
           training: dict | None = None) -> str:
    """Markdown card from the manifest, an evaluation result and the training arguments."""
    m = manifest
    lines = [f"# {m.name} {m.version}", ""]
    if m.not_for_clinical_use:
        lines += ["**NOT FOR CLINICAL USE.** " + (
            "Trained on synthetic images only; its outputs say nothing about real patients."
            if _synthetic(m) else "A research model from a small development set; not "
            "validated for any clinical decision."), ""]
    lines += [
        "## What it is",
        f"- Task: `{m.task}` (classes {', '.join(m.classes)}); {_networks(m)}, "
        "combined by the method's rules at inference.",
        f"- Architecture: {m.architecture.get('type', '?')}, "
        f"{m.architecture.get('conv_layers', '?')} convolutional layers in "
        f"{m.architecture.get('residual_blocks', '?')} residual blocks, "
        + (f"width {m.architecture['width']}, " if "width" in m.architecture else "")
        + f"{m.architecture.get('activation', 'LeakyReLU')}, softmax output.",
        f"- Input: {m.input_size} x {m.input_size} px from preprocessing "
        f"`{m.preprocessing_version}`, then (x - {m.normalisation.mean:.5f}) / "
        f"{m.normalisation.std:.5f}. ONNX input `{m.input_name}`, output `{m.output_name}`.",
        f"- Intended use: {m.intended_use or '-'}",
        "", "## Training data", f"{m.training_data}", "",
    ]
    if training:
        keys = ("recipe", "network", "arch", "head", "init_from", "freeze_bn", "task",
                "input_size",
                "width", "optimizer", "lr", "momentum", "weight_decay", "scheduler",
                "batch_size", "epochs", "lr_factor", "lr_patience", "loss", "class_weights",
                "sampler", "select", "early_stop", "calibrate", "rotation", "scale",
                "translate", "gamma", "contrast", "train_crop", "val_fraction", "split_seed",
                "seed")
        lines += ["## Training settings",
                  ", ".join(f"`{k}`={training[k]}" for k in keys if k in training), ""]
        val = m.metrics.get("validation_accuracy")
        if isinstance(val, dict):
            lines += ["Best validation accuracy per view (model selection): " + ", ".join(
                f"{k} {_pct(v)}" for k, v in val.items()), ""]
    if evaluation:
        lines += [f"## Metrics (held-out set: {evaluation['exams']} exams, "
                  f"{evaluation['images']} images; truth column "
                  f"`{evaluation.get('label_column', 'density')}`)", "",
                  "| level | n | accuracy | 95% CI | linear kappa | dense/non-dense acc. | "
                  "dense AUC |", "|---|---|---|---|---|---|---|"]
        for level, e in evaluation["levels"].items():
            ci = e.get("ci95", {}).get("accuracy")
            ci_s = f"{_pct(ci[0])}-{_pct(ci[1])}" if ci else "-"
            lines.append(f"| {level} | {e['n']} | {_pct(e['accuracy'])} | {ci_s} | "
                         f"{e['kappa_linear']:.3f} | {_pct(e['dense_accuracy'])} | "
                         f"{e['dense_auc']:.3f} |")
        ex = evaluation["levels"].get("exam")
        if ex:
            lines += ["", "Exam-level confusion (rows truth, columns predicted, "
                      f"{' '.join(evaluation['classes'])}): {ex['confusion']}"]
        lines.append("")
    cv = m.metrics.get("cross_validation")
    if isinstance(cv, dict) and cv.get("rows"):
        from mammo_density.train.experiments import format_cv_table

        lines += [f"## Cross-validation ({cv.get('k')} folds by patient, split seed "
                  f"{cv.get('split_seed')}, {cv.get('input_size')} px; baselines on the "
                  "same folds)", "",
                  "Mean (sample sd) over the folds; recall per class and dense/non-dense "
                  "accuracy pooled over the out-of-fold predictions. `cnn` is the recipe "
                  "this entry was trained with; each fold's model scored its held-out "
                  "patients. The exported entry averages the fold models, so it has no "
                  "held-out estimate of its own: expect about the `cnn` row or slightly "
                  "better.", "", format_cv_table(cv["rows"]), ""]
    temps = m.metrics.get("temperature")
    if temps:
        calib = m.metrics.get("calibration")
        eces = []
        for c in (calib.values() if isinstance(calib, dict) else calib or []):
            if isinstance(c, dict):
                eces.append((c["ece_before"], c["ece_after"]))
        line = f"## Calibration\nTemperature scaling on the validation images: T = {temps}."
        if eces:
            line += (" Validation expected calibration error (10 bins) before -> after: "
                     + ", ".join(f"{b:.3f} -> {a:.3f}" for b, a in eces) + ".")
        lines += [line, ""]
    timing = m.metrics.get("inference_ms_per_image")
    if isinstance(timing, dict) and timing:
        lines += ["## Inference time", "ONNX Runtime, CPU, 1 thread, batch 1, median of 10: "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in timing.items())
                  + " per image (measured at export on the exporting machine).", ""]
    parity = m.metrics.get("export_parity_max_abs_diff")
    if isinstance(parity, dict):
        lines += ["## Export check", "ONNX Runtime vs PyTorch, max |difference| of the "
                  "softmax: " + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()), ""]
    fusion = m.metrics.get("cpu_fusion_identity_convs")
    if isinstance(fusion, dict) and any(fusion.values()):
        lines += ["The fp32 files also hold identity 1x1 depthwise convolutions (weight 1, "
                  "bias 0) in front of the LeakyReLUs that follow a residual addition ("
                  + ", ".join(f"{k} {v}" for k, v in fusion.items()) + "): they change no "
                  "output beyond float rounding and keep ONNX Runtime's CPU path in its "
                  "blocked layout; the int8 variant is quantised without them.", ""]
    if m.commands:
        lines += ["## How it was made (exact commands)", "```", *m.commands, "```", ""]
    lines += ["## Files", "| file | sha256 |", "|---|---|"]
    lines += [f"| {f} | `{h}` |" for f, h in m.files_sha256.items()]
    lines += ["", "## Limitations",
              "- Synthetic phantoms are far simpler than mammograms; accuracy here is no "
              "estimate of clinical accuracy." if _synthetic(m) else
              "- See the training data description for the population it was trained on.",
              "- Validate on local data (`mammo-density evaluate`) before any use.", ""]
    return "\n".join(lines)


def _synthetic(m: ModelManifest) -> bool:
    return "synthetic" in m.training_data.lower()


def _networks(m: ModelManifest) -> str:
    files = sorted(set(m.views.values()))
    members = m.architecture.get("members")
    text = (f"one network shared by the views ({', '.join(m.views)})" if len(files) <
            len(m.views) else f"one network per view ({', '.join(m.views)})")
    if isinstance(members, int) and members > 1:
        text += (f"; each file is an ensemble: the mean of the probabilities of the "
                 f"{members} cross-validation fold models")
        runs = m.architecture.get("runs")
        if isinstance(runs, int) and runs > 1:
            text += f" of {runs} training runs on the same folds"
    return text


def write_card(folder: Path, manifest: ModelManifest, evaluation: dict | None = None,
               training: dict | None = None) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(render(manifest, evaluation, training))
    return path
