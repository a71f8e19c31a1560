"""The pull-request report: `python -m pipeline.report --base main` (`make report`, `make pr-report`, CI).

- `__main__`: the command line, its files (report.md, comment.md) and exit status.
- `build`: both revisions gathered (pipeline.results), judged (classifier.judging.compare) and drawn into a `Report`.
- `changes`: what git and DVC say changed: params, stages that reran, the model's hash, the plots page.
- `render`: the `Report` as GitHub markdown (pure).
- `escape`: what the report echoes from a pull request's own files, as inert markdown.
- `plots`: the images (training curves, confusion matrices), matplotlib's object API.

Imports pipeline.results, pipeline.run.stages and pipeline.project; never torch.
"""
