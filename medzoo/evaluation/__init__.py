"""Evaluation of zoo backbones: recipe -> grid -> runs -> results (see docs/architecture.md).

- :mod:`~medzoo.evaluation.recipe`: the ``recipes/eval-*.toml`` schema, loading, validation.
- :mod:`~medzoo.evaluation.inits`: one init prepared for one dataset, its cached features.
- :mod:`~medzoo.evaluation.run`: runs the grid (probe, fine-tuning) and ``train_head``.
- :mod:`~medzoo.evaluation.results`: summary, figures and metrics written back to the zoo.
- :mod:`~medzoo.evaluation.classifiers`: backbone + probe head registered as a classifier.

:mod:`medzoo.evaluate` re-exports the public names.
"""
