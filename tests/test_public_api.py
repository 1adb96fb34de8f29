import pollen

EXPECTED = {
    "Aggregator", "Checkpointer", "ClientConfig", "ConfigError", "Coordinator", "DataError", "Dataset",
    "EvalResult", "Federation", "InProcessTransport", "LocalParty", "MissingExtraError", "ModelError",
    "ModelState", "NameFilter", "PartyFailure", "Pipeline", "PollenError", "PrivacyError", "ProtocolError",
    "Reply", "RoundConfig", "RunConfig", "RunError", "Sampler", "ServerOptimizer", "Shard", "StepContext",
    "Strategy", "StrategyError", "Task", "Trainer", "Transport", "TransportError", "Update", "UpdateStep",
    "WeightedMean", "build_model", "centralized", "load_dataset", "load_toml", "make_config", "partition",
    "simulate", "__version__",
}


def test_public_api_is_pinned():
    assert set(pollen.__all__) == EXPECTED
    for name in pollen.__all__:
        assert hasattr(pollen, name), name


def test_every_error_is_a_pollen_error():
    for name in pollen.__all__:
        obj = getattr(pollen, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pollen.PollenError)
