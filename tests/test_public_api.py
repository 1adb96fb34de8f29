import subprocess
import sys

import pollen

EXPECTED = {
    "Aggregator", "App", "AppError", "Assembly", "Checkpointer", "ClientConfig", "ConfigError", "Context",
    "Coordinator", "DataError", "Dataset", "EvalResult", "ImageFolder", "InProcessTransport", "LocalParty", "Metric",
    "MissingExtraError", "ModelError", "ModelState", "NameFilter", "PartyData", "PartyFailure", "PartyReplied",
    "Pipeline", "PollenError", "PrivacyError", "ProtocolError", "Reply", "RoundCompleted", "RoundConfig",
    "RoundStarted", "RunCompleted", "RunConfig", "RunError", "RunInterrupted", "RunResult", "RunStarted", "Sampler",
    "ServerOptimizer", "Shard", "StepContext", "Strategy", "StrategyError", "Table", "Task", "Trainer", "Transport",
    "TransportError", "Update", "UpdateStep", "WeightedMean", "assemble", "build_model", "centralized",
    "export_model", "load_app", "load_dataset", "load_model", "load_toml", "make_config", "partition", "read_csv",
    "read_parquet", "read_tensors", "simulate", "__version__",
}


def test_public_api_is_pinned():
    assert set(pollen.__all__) == EXPECTED
    for name in pollen.__all__:
        assert hasattr(pollen, name), name


def test_every_error_is_a_pollen_error():
    for name in pollen.__all__:
        obj = getattr(pollen, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not pollen.RunInterrupted:
            assert issubclass(obj, pollen.PollenError), name
    assert issubclass(pollen.RunInterrupted, KeyboardInterrupt)  # Ctrl-C stays Ctrl-C, carrying the run folder


def test_importing_pollen_does_not_load_torch():
    """``pollen --help`` must answer fast: the package imports its names on first use."""
    code = "import sys, pollen, pollen.cli; pollen.cli.build_parser(''); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
