"""The task registry: what each task's rows look like, how it is scored, and where it lives.

One frozen :class:`TaskSpec` per task. Field names and integer label ids are those of the
Hugging Face configs (``glue/<task>``, ``xnli/<lang>``, ``sick``, ``snli``, ``imdb``), so the
same spec reads the local JSON Lines copies in ``shared/data`` and the hub datasets.

Where a split is missing locally the spec says what to do (see ``shared/data/README.md``):
MNLI trains on ``validation_mismatched`` when no ``train`` file exists; MR / CR / MPQA have a
train file only, so a seeded ``holdout`` fraction of it is the dev split.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Mapping

TRACKS = ("nli", "paraphrase", "sentiment", "acceptability")
METRIC_NAMES = ("accuracy", "f1", "matthews", "pearson", "spearman")
XNLI_LANGS = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """How one task's data is read and scored.

    ``metrics[0]`` is the main metric (best-dev selection). ``local_dir`` is the task's
    folder under the data dir; split ``s`` is read from ``<local_dir>/<s>.jsonl``, else from
    the file of the split that ``local_fallbacks`` names for it. ``holdout`` > 0: when there
    is no dev file, that seeded fraction of the train file is the dev split (and is removed
    from train). ``hub`` = (path, config) for ``datasets.load_dataset``; ``hub_splits``
    renames splits there (IMDb has no validation split on the hub: its test is the dev).
    ``drop_unlabeled``: rows labelled -1 (HF's "no gold label") are dropped by default.
    """

    name: str
    text_fields: tuple[str, ...]
    label_field: str
    num_labels: int
    track: str
    metrics: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    regression: bool = False
    hub: tuple[str, str | None] | None = None
    train_split: str = "train"
    dev_split: str = "validation"
    local_dir: str = ""
    local_fallbacks: tuple[tuple[str, str], ...] = ()
    hub_splits: tuple[tuple[str, str], ...] = ()
    holdout: float = 0.0
    holdout_seed: int = 0
    drop_unlabeled: bool = False
    note: str = ""

    def __post_init__(self):
        if not self.name:
            raise ValueError("TaskSpec.name must be non-empty")
        if not isinstance(self.text_fields, tuple) or len(self.text_fields) not in (1, 2):
            raise ValueError(f"task {self.name}: text_fields must be a tuple of 1 or 2 field names, got {self.text_fields!r}")
        if self.track not in TRACKS:
            raise ValueError(f"task {self.name}: track {self.track!r} is not one of {TRACKS}")
        if not self.metrics or any(m not in METRIC_NAMES for m in self.metrics):
            raise ValueError(f"task {self.name}: metrics {self.metrics!r} must be a non-empty tuple from {METRIC_NAMES}")
        if self.regression:
            if self.num_labels != 1:
                raise ValueError(f"task {self.name}: a regression task has num_labels=1, got {self.num_labels}")
            if self.label_names:
                raise ValueError(f"task {self.name}: a regression task has no label_names, got {self.label_names!r}")
        else:
            if self.num_labels < 2:
                raise ValueError(f"task {self.name}: a classification task needs num_labels >= 2, got {self.num_labels}")
            if len(self.label_names) != self.num_labels:
                raise ValueError(
                    f"task {self.name}: label_names {self.label_names!r} must have num_labels={self.num_labels} entries"
                )
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"task {self.name}: holdout must be in [0, 1), got {self.holdout}")
        if not self.local_dir:
            object.__setattr__(self, "local_dir", self.name)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    def local_candidates(self, split: str) -> tuple[str, ...]:
        """Relative file paths that may hold ``split``, in the order they are tried."""
        out = [f"{self.local_dir}/{split}.jsonl"]
        out += [f"{self.local_dir}/{alt}.jsonl" for s, alt in self.local_fallbacks if s == split]
        return tuple(out)

    def hub_split(self, split: str) -> str:
        return dict(self.hub_splits).get(split, split)


_GLUE = "nyu-mll/glue"
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_NEGPOS = ("negative", "positive")


def _glue(name, fields, track, metrics, label_names=(), regression=False, **kw) -> TaskSpec:
    return TaskSpec(name=name, text_fields=fields, label_field="label", num_labels=1 if regression else len(label_names),
                    track=track, metrics=metrics, label_names=label_names, regression=regression,
                    hub=(_GLUE, name), **kw)


def _senteval(name) -> TaskSpec:
    return TaskSpec(name=name, text_fields=("text",), label_field="label", num_labels=2, track="sentiment",
                    metrics=("accuracy",), label_names=_NEGPOS, hub=None, holdout=0.1,
                    note=f"{name} has no official split: its dev split is a seeded 10% of train.jsonl")


def _xnli(lang: str) -> TaskSpec:
    return TaskSpec(name=f"xnli-{lang}", text_fields=("premise", "hypothesis"), label_field="label", num_labels=3,
                    track="nli", metrics=("accuracy",), label_names=_NLI3, hub=("facebook/xnli", lang),
                    local_dir=f"xnli/{lang}",
                    note="XNLI is evaluation-only locally: train on English NLI data (mnli/snli), never on xnli-en")


_SPECS = [
    _glue("cola", ("sentence",), "acceptability", ("matthews",), ("unacceptable", "acceptable")),
    _glue("sst2", ("sentence",), "sentiment", ("accuracy",), _NEGPOS),
    _glue("mrpc", ("sentence1", "sentence2"), "paraphrase", ("accuracy", "f1"), ("not_equivalent", "equivalent")),
    _glue("qqp", ("question1", "question2"), "paraphrase", ("accuracy", "f1"), ("not_duplicate", "duplicate"),
          note="QQP is not in the local data"),
    _glue("stsb", ("sentence1", "sentence2"), "paraphrase", ("pearson", "spearman"), regression=True),
    _glue("mnli", ("premise", "hypothesis"), "nli", ("accuracy",), _NLI3, dev_split="validation_matched",
          local_fallbacks=(("train", "validation_mismatched"),),
          note="local MNLI has no train split: train reads validation_mismatched (never report results on it)"),
    _glue("qnli", ("question", "sentence"), "nli", ("accuracy",), _NLI2, note="local QNLI has validation only"),
    _glue("rte", ("sentence1", "sentence2"), "nli", ("accuracy",), _NLI2),
    TaskSpec(name="sick", text_fields=("sentence_A", "sentence_B"), label_field="label", num_labels=3, track="nli",
             metrics=("accuracy",), label_names=_NLI3, hub=("RobZamp/sick", None)),
    TaskSpec(name="sick-relatedness", text_fields=("sentence_A", "sentence_B"), label_field="relatedness_score",
             num_labels=1, regression=True, track="paraphrase", metrics=("pearson", "spearman"),
             hub=("RobZamp/sick", None), local_dir="sick"),
    TaskSpec(name="snli", text_fields=("premise", "hypothesis"), label_field="label", num_labels=3, track="nli",
             metrics=("accuracy",), label_names=_NLI3, hub=("stanfordnlp/snli", None), drop_unlabeled=True,
             note="local SNLI train is a 1,666-row sample"),
    _senteval("mr"),
    _senteval("cr"),
    _senteval("mpqa"),
    TaskSpec(name="imdb", text_fields=("text",), label_field="label", num_labels=2, track="sentiment",
             metrics=("accuracy",), label_names=("neg", "pos"), hub=("stanfordnlp/imdb", None),
             hub_splits=(("validation", "test"),), note="local IMDb is a 1,707 / 245-row sample"),
    *[_xnli(lang) for lang in XNLI_LANGS],
]

TASKS: Mapping[str, TaskSpec] = types.MappingProxyType({s.name: s for s in _SPECS})


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The spec for ``task`` (a name such as ``"sst2"`` or ``"xnli-de"``, or a spec itself)."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None


def track_of(task: str | TaskSpec) -> str:
    """The task family used for same-track merging ("nli", "paraphrase", ...)."""
    return get_task(task).track


def tasks_in_track(track: str) -> tuple[str, ...]:
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}; expected one of {TRACKS}")
    return tuple(n for n, s in TASKS.items() if s.track == track)
