"""The CLI and the API build the same run from the same words: every ``jadapt train`` /
``jadapt eval`` default is the API's, and the adapter a run builds is ``jadapt.preset``'s."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

import jadapt
from jadapt.cli import build_parser, train_config
from jadapt.train.config import TrainConfig


def test_every_train_default_is_the_api_default():
    cli = train_config(build_parser().parse_args(["train", "--task", "rte", "--out", "x"]))
    api = TrainConfig(task="rte", out="x")
    for f in dataclasses.fields(TrainConfig):
        assert getattr(cli, f.name) == getattr(api, f.name), f.name
    assert cli == api


def test_flags_reach_the_config():
    args = build_parser().parse_args(["train", "--task", "mrpc", "--method", "lora", "--lora-alpha", "32",
                                      "--no-progress", "--no-compile-ahead", "--train-layer-norms", "yes",
                                      "--fusion-adapters", "a", "b", "--out", "x"])
    cfg = train_config(args)
    assert (cfg.method, cfg.lora_alpha, cfg.progress, cfg.compile_ahead, cfg.train_layer_norms) == \
        ("lora", 32.0, False, False, True)
    assert cfg.fusion_adapters == ("a", "b")


def test_every_eval_default_is_the_api_default():
    from jadapt.train.evaluate import evaluate_checkpoint

    args = vars(build_parser().parse_args(["eval", "--checkpoint", "c", "--out", "x"]))
    params = inspect.signature(evaluate_checkpoint).parameters
    shared = [n for n in params if n in args and n != "checkpoint"]
    assert {"task", "batch_size", "max_length", "attention", "buckets", "data_dir", "split"} <= set(shared)
    for n in shared:
        assert args[n] == params[n].default, n


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "parallel", "lora"])
def test_a_default_run_builds_the_preset_adapter(method, tiny_model_dir):
    """LoRA alpha included: ``jadapt train --method lora`` and ``jadapt.preset("lora")`` agree."""
    from jadapt.data import get_task
    from jadapt.train.loop import build_model

    cfg = train_config(build_parser().parse_args(["train", "--task", "rte", "--method", method, "--out", "x"]))
    model, _, names = build_model(cfg, get_task("rte"), tiny_model_dir)
    built = dict(model.adapters)[names[0]]
    want = jadapt.preset(method)
    for f in dataclasses.fields(want):
        assert getattr(built, f.name) == getattr(want, f.name), f.name
