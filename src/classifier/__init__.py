"""classifier: the ML library behind the pipeline (one module per DVC stage).

Nothing here imports torch at package import time: the download and prepare
stages must start fast, and importing torch costs about 1.5 s.
"""
