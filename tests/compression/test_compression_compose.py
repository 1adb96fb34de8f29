"""Composition: codecs come after DP clipping and noise (order enforced), are refused under
masking with the reason, error feedback is refused with clipping; configuration and flags."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.compression import Downlink, TopK, int8, steps_from_config
from pollen.transforms import check_pipeline
from pollen.config import flag_fields, make_config
from pollen.errors import ConfigError
from pollen.transforms.base import Pipeline, StepContext, UpdateStep
from pollen.types import Update


class Recorder(UpdateStep):
    """A stand-in for a privacy step that records when it ran."""

    def __init__(self, name: str, stage: str, log: list, linear: bool = True) -> None:
        self.name, self.stage, self.log, self.linear = name, stage, log, linear

    def encode(self, update, ctx):
        self.log.append(self.name)
        return update


def test_clip_and_noise_run_before_the_codec():
    log: list[str] = []

    class LoggedTopK(TopK):
        def encode(self, update, ctx):
            log.append("topk")
            return super().encode(update, ctx)

    pipe = Pipeline((Recorder("clip", "clip", log), Recorder("noise", "noise", log), LoggedTopK(0.1)))
    pipe.encode(Update({"w": np.ones(10, np.float32)}, 1), StepContext("0", 1, np.random.default_rng(0)))
    assert log == ["clip", "noise", "topk"]
    with pytest.raises(ConfigError, match="order"):
        Pipeline((TopK(0.1), Recorder("noise", "noise", log)))  # quantising before noise is refused


@pytest.mark.parametrize("codec", [int8(), TopK(0.01)])
def test_codecs_are_refused_under_masking_with_the_reason(codec):
    pipe = Pipeline((codec, Recorder("secagg", "mask", [], linear=True)))
    with pytest.raises(ConfigError, match="sum") as err:
        check_pipeline(pipe)
    assert codec.name in str(err.value) and "finite field" in str(err.value)


def test_downlink_and_masking_compose():
    check_pipeline(Pipeline((Downlink("bf16"), Recorder("secagg", "mask", []))))


def test_error_feedback_refused_with_dp_clipping():
    check_pipeline(Pipeline((Recorder("clip", "clip", []), TopK(0.01))))  # fine without feedback
    with pytest.raises(ConfigError, match="clip norm"):
        check_pipeline(Pipeline((Recorder("clip", "clip", []), TopK(0.01, error_feedback=True))))


def test_steps_from_config_order_and_choices():
    cfg = make_config({"compression": {"codec": "topk", "topk_fraction": 0.02, "error_feedback": True,
                                       "downlink": "fp16", "prune": "channel", "autocast": "bf16"}})
    steps = steps_from_config(cfg)
    assert [s.name for s in steps] == ["autocast", "downlink", "prune", "topk"]
    assert steps[-1].fraction == 0.02 and steps[-1].error_feedback
    assert steps_from_config(make_config({})) == []
    qs = steps_from_config(make_config({"compression": {"codec": "qsgd", "qsgd_bits": 3}}))[0]
    assert qs.levels == 3 and qs.block == 512 and qs.unbiased
    with pytest.raises(ConfigError, match="lossy codec"):
        steps_from_config(make_config({"compression": {"error_feedback": True}}))


def test_config_flags_and_validation():
    flags = flag_fields()
    for flag in ("codec", "qsgd-bits", "codec-block", "topk-fraction", "topk-values", "error-feedback",
                 "terngrad-clip", "downlink", "prune", "prune-fraction", "autocast"):
        assert flags[flag][0] == "compression"
    assert make_config({"compression": {"codec": None}}).compression.codec == "none"  # `--codec none`
    with pytest.raises(ConfigError, match="codec"):
        make_config({"compression": {"codec": "zip"}})
    with pytest.raises(ConfigError, match="topk_fraction"):
        make_config({"compression": {"topk_fraction": 0}})


def test_cli_accepts_codec_flags():
    from pollen.cli import build_parser, config_from_args

    args = build_parser().parse_args(["simulate", "--codec", "topk", "--topk-fraction", "0.01", "--error-feedback",
                                      "--downlink", "none"])
    c = config_from_args(args).compression
    assert (c.codec, c.topk_fraction, c.error_feedback, c.downlink) == ("topk", 0.01, True, "none")


@pytest.mark.parametrize("compression, privacy, match", [
    ({"codec": "int8"}, {"secagg": True}, "codec"),
    ({"codec": "topk", "error_feedback": True}, {"client_dp": "central", "client_noise_multiplier": 1.0,
                                                 "delta": 1e-5}, "clip norm"),
])
def test_real_privacy_configs_are_checked(compression, privacy, match):
    from pollen.compose import assemble

    with pytest.raises(ConfigError, match=match):
        assemble(make_config({"compression": compression, "privacy": privacy}))


def test_real_dp_pipeline_orders_clip_noise_then_codec():
    from pollen.compose import assemble

    cfg = make_config({"compression": {"codec": "topk"}, "privacy": {"client_dp": "local", "client_noise_multiplier": 1.0,
                                                                     "delta": 1e-5}})
    stages = [s.stage for s in assemble(cfg).pipeline.steps]
    assert [s for s in stages if s != "observe"] == ["clip", "noise", "compress"]  # observe: privacy facts, pass-through
