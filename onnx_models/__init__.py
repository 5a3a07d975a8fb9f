"""Model registry: one folder per model (per-view ONNX files + manifest.json + MODEL_CARD.md).

``DEFAULT_MODEL`` names the bundled entry that ``serve`` and ``classify`` use when no model
directory is configured: a demo trained on synthetic images only, NOT FOR CLINICAL USE
(rebuilt by ``train/make_demo_model.sh``).
"""

DEFAULT_MODEL = "demo-synthetic-birads4"
