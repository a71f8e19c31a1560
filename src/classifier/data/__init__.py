"""The data's way in: from a source to the prepared split. No torch.

    snapshot.py       stage `snapshot`: list the image folder cheaply (python -m classifier.data.snapshot)
    download.py       stage `download`: the raw files, packed (python -m classifier.data.download)
    prepare.py        stage `prepare`: one canonical format and a hash-based split (python -m classifier.data.prepare)
    prepared.py       the prepared split files: where prepare writes them, how train, evaluate and flips read them
    checks.py         the data checks before training, run by prepare (params' `checks`)
    leakage.py        test images a training split also holds (the data checks and the PR report)
    images.py         images in: the one decode prepare and predict share
    decoded_cache.py  decoded images kept between prepare runs
    shards.py         packed, content-addressed shards of the raw files
    export_folder.py  MNIST-5k as an ImageFolder tree (python -m classifier.data.export_folder)
"""
