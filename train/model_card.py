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
        lines += ["**NOT FOR CLINICAL USE.** Trained on synthetic images only; its outputs "
                  "say nothing about real patients.", ""]
    lines += [
        "## What it is",
        f"- Task: `{m.task}` (classes {', '.join(m.classes)}); one network per view "
        f"({', '.join(m.views)}), combined by the method's rules at inference.",
        f"- Architecture: {m.architecture.get('type', '?')}, "
        f"{m.architecture.get('conv_layers', '?')} convolutional layers in "
        f"{m.architecture.get('residual_blocks', '?')} residual blocks, width "
        f"{m.architecture.get('width', '?')}, LeakyReLU, softmax output.",
        f"- Input: {m.input_size} x {m.input_size} px from preprocessing "
        f"`{m.preprocessing_version}`, then (x - {m.normalisation.mean:.5f}) / "
        f"{m.normalisation.std:.5f}. ONNX input `{m.input_name}`, output `{m.output_name}`.",
        f"- Intended use: {m.intended_use or '-'}",
        "", "## Training data", f"{m.training_data}", "",
    ]
    if training:
        keys = ("task", "input_size", "width", "optimizer", "lr", "momentum", "weight_decay",
                "batch_size", "epochs", "lr_factor", "lr_patience", "rotation",
                "val_fraction", "split_seed", "seed")
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
    parity = m.metrics.get("export_parity_max_abs_diff")
    if isinstance(parity, dict):
        lines += ["## Export check", "ONNX Runtime vs PyTorch, max |difference| of the "
                  "softmax: " + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()), ""]
    if m.commands:
        lines += ["## How it was made (exact commands)", "```", *m.commands, "```", ""]
    lines += ["## Files", "| file | sha256 |", "|---|---|"]
    lines += [f"| {f} | `{h}` |" for f, h in m.files_sha256.items()]
    lines += ["", "## Limitations",
              "- Synthetic phantoms are far simpler than mammograms; accuracy here is no "
              "estimate of clinical accuracy." if m.not_for_clinical_use else
              "- See the training data description for the population it was trained on.",
              "- Validate on local data (`mammo-density evaluate`) before any use.", ""]
    return "\n".join(lines)


def write_card(folder: Path, manifest: ModelManifest, evaluation: dict | None = None,
               training: dict | None = None) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(render(manifest, evaluation, training))
    return path
