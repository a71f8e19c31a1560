"""classifier: the ML library behind the pipeline, in rooms by concept; dvc.yaml runs one module per stage.

    validate.py     stage `validate` (params.yaml checked before any other stage runs)
    data/           the data's way in: stages `snapshot`, `download`, `prepare` (torch-free)
    training/       the model and its stages: `train`, `evaluate`, `save`; predict serves the model
    judging/        is one model better than another on the same test images (pure: no torch, git or DVC)

Shared by every room, importing none: cli.py (the stages' shell), files.py (atomic writes, hashes),
params.py (params.yaml validated), datasets.py (the data sets known), plots_template.py.
Rooms import one way: judging and training may use data's modules, data neither
(tests/unit/test_pipeline_layers.py).

Nothing here imports torch at package import time: the download and prepare
stages must start fast, and importing torch costs about 1.5 s.
"""
