"""The model and its stages: train, evaluate and save it, and serve it.

    train.py          stage `train` (python -m classifier.training.train)
    evaluate.py       stage `evaluate` (python -m classifier.training.evaluate)
    save.py           stage `save`: the quality gate, the published model and card (python -m classifier.training.save)
    model.py          the MLP, the device it runs on, every crossing to and from it
    split.py          the prepared split in memory, in whole-tensor batches
    serialization.py  torch.save / torch.load: bytes-stable saving, weights-only loading
    predict.py        classify image files with a published model (python -m classifier.training.predict)
    flips.py          the test images two models disagree on, as one picture (python -m classifier.training.flips)
"""
