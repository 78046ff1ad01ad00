"""What models are used for: :mod:`attnkit.tasks.sentence` (sentence embeddings,
:class:`~attnkit.tasks.sentence.Encoder`) and :mod:`attnkit.tasks.classification`
(fine-tuning for sequence classification, its metrics and predictions)."""
