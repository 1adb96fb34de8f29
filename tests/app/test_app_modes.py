"""An app with a model and data Pollen has never seen runs in every mode — inline simulation, the
process pool, and a deployment over gRPC with mutual TLS where each party reads only its own CSV —
and every mode ends with the same model."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from pollen.app import load_app
from pollen.simulation import simulate

APP = '''
"""Three clinics, each with its own CSV of 4 measurements and a 3-class outcome."""
from pathlib import Path

import torch

from pollen.data import read_csv

HERE = Path(__file__).parent


class Net(torch.nn.Module):  # not one of Pollen's models
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 12)
        self.b = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def model():
    return Net()


def load_data(ctx):
    return read_csv(ctx.data_path, target="outcome", classes=[0, 1, 2])


def server_data(ctx):
    return read_csv(HERE / "test.csv", target="outcome", classes=[0, 1, 2])


metrics = ["accuracy", "f1"]
primary_metric = "f1"
config = {"data": {"parties": 3, "holdout": 0.0}, "federation": {"rounds": 3},
          "train": {"lr": 0.2, "batch_size": 16}, "simulation": {"threads": 1}}
'''


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    rows = ["m1,m2,m3,m4,outcome"] + [",".join(f"{v:.6f}" for v in xi) + f",{int(yi)}" for xi, yi in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    """The app file, one CSV per clinic (different sizes) and the coordinator's test CSV."""
    root = tmp_path_factory.mktemp("clinic")
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 4)) * 2
    for name, n in (("site0", 60), ("site1", 45), ("site2", 30), ("test", 90)):
        y = rng.integers(0, 3, n)
        write_csv(root / f"{name}.csv", centres[y] + rng.normal(size=(n, 4)), y)
    (root / "app.py").write_text(APP)
    return root


def _sim(clinic: Path, tmp_path: Path, name: str, **kw):
    return simulate(app=str(clinic / "app.py"), data_dir=str(clinic / "site{party}.csv"), runs_dir=str(tmp_path),
                    name=name, progress=False, **kw)


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_new_app_runs_inline_in_the_pool_and_over_grpc_with_tls_to_the_same_model(clinic, tmp_path):
    from pollen.config import make_config
    from pollen.transport.rpc.party import GrpcParty, PartyOptions
    from pollen.transport.rpc.serve import run_server
    from pollen.transport.rpc.tls import make_certs

    inline = _sim(clinic, tmp_path, "inline")
    h = inline.history
    assert [r["round"] for r in h] == [1, 2, 3] and all(r["parties"] == ["0", "1", "2"] for r in h)
    assert h[-1]["f1"] > 0.6 and h[-1]["accuracy"] > 0.6  # 3 separable classes (chance 1/3)
    pool = _sim(clinic, tmp_path, "pool", backend="process", workers=2)
    _same(inline.state, pool.state)

    # deployment: a coordinator with TLS, three parties each given only its own CSV
    certs = make_certs(tmp_path / "certs", ["0", "1", "2"])
    port = free_port()
    cfg = make_config({"network": {"host": "127.0.0.1", "port": port, "min_parties": 3, "certs_dir": str(certs),
                                   "heartbeat_interval": 30.0},
                       "run": {"runs_dir": str(tmp_path), "name": "grpc", "progress": False}})
    result: dict = {}
    server = threading.Thread(target=lambda: result.update(run=run_server(cfg, app=str(clinic / "app.py"))), daemon=True)
    server.start()
    parties = [GrpcParty(PartyOptions(pid, f"localhost:{port}", str(clinic / f"site{pid}.csv"), certs_dir=str(certs),
                                      app=str(clinic / "app.py"), backoff_base=0.05, backoff_cap=0.5, retry_seconds=60))
               for pid in ("0", "1", "2")]
    threads = [threading.Thread(target=p.run, daemon=True) for p in parties]
    for t in threads:
        t.start()
    server.join(timeout=300)
    for t in threads:
        t.join(timeout=60)
    assert "run" in result, "the coordinator did not finish"
    _same(inline.state, result["run"].state)
    summary = (tmp_path / "grpc" / "summary.json").read_text()
    assert '"primary_metric": "f1"' in summary and '"tls": true' in summary


def test_app_defaults_lie_under_the_users_settings(clinic, tmp_path):
    res = _sim(clinic, tmp_path, "rounds", rounds=2)  # the app says 3 rounds; the caller wins
    assert len(res.history) == 2
    import tomllib

    saved = tomllib.loads((res.run_dir / "config.toml").read_text())
    assert saved["app"]["path"] == str((clinic / "app.py").resolve()) and saved["train"]["lr"] == 0.2


def test_callbacks_see_every_round(clinic, tmp_path):
    from pollen import RoundCompleted, RunCompleted

    seen = []
    _sim(clinic, tmp_path, "cb", callbacks=[seen.append])
    rounds = [e.round for e in seen if isinstance(e, RoundCompleted)]
    assert rounds == [1, 2, 3]
    last_round = max(i for i, e in enumerate(seen) if isinstance(e, RoundCompleted))
    assert [i for i, e in enumerate(seen) if isinstance(e, RunCompleted)][0] > last_round  # after the rounds


def test_load_model_gives_back_the_trained_module(clinic, tmp_path):
    import torch

    import pollen

    res = _sim(clinic, tmp_path, "load")
    model = pollen.load_model(res.run_dir)
    assert type(model).__name__ == "Net"
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), res.state[k])
    x = torch.zeros(2, 4)
    assert model(x).shape == (2, 3)


def test_export_torchscript_and_onnx_compute_what_the_model_computes(clinic, tmp_path):
    import torch

    import pollen
    from pollen.export import export_model

    res = _sim(clinic, tmp_path, "export")
    model = pollen.load_model(res.run_dir)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    scripted = torch.jit.load(str(export_model(res.run_dir, "torchscript")))
    torch.testing.assert_close(scripted(x), model(x))
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = export_model(res.run_dir, "onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_app_file_errors_name_the_problem(tmp_path):
    from pollen.app import AppError

    (tmp_path / "nomodel.py").write_text("def load_data(ctx):\n    return None\n")
    with pytest.raises(AppError, match=r"has no model\(\) function"):
        load_app(str(tmp_path / "nomodel.py"))
    with pytest.raises(AppError, match="does not exist"):
        load_app(str(tmp_path / "missing.py"))
    (tmp_path / "broken.py").write_text("import torch\nx = 1 / 0\n")
    with pytest.raises(AppError, match=r"ZeroDivisionError.*broken.py:2"):
        load_app(str(tmp_path / "broken.py"))


def test_an_error_in_the_apps_load_data_names_its_file_and_line(tmp_path):
    from pollen.app import AppError

    (tmp_path / "bad.py").write_text(
        "import torch\n\ndef model():\n    return torch.nn.Linear(2, 2)\n\n"
        "def load_data(ctx):\n    return {'x': 1}['label']\n")
    with pytest.raises(AppError, match=r"load_data\(ctx\) raised KeyError: 'label' \(.*bad.py:7 in load_data\)"):
        simulate(app=str(tmp_path / "bad.py"), parties=2, rounds=1, runs_dir=str(tmp_path), progress=False)


def test_own_train_cannot_run_with_a_proximal_term(tmp_path):
    from pollen.errors import ConfigError

    app = {"model": lambda: None, "load_data": lambda ctx: None, "train": lambda m, d, c, ctx: {}}
    with pytest.raises(ConfigError, match="own local loop"):
        simulate(app=app, strategy="fedprox", parties=2, rounds=1, runs_dir=str(tmp_path), progress=False)


def test_device_names_are_checked_with_a_clear_message():
    import torch

    from pollen.client.trainer import resolve_device
    from pollen.errors import ConfigError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device; use --device cpu"):
            resolve_device("cuda:0")


def test_an_app_object_cannot_go_to_worker_processes(tmp_path):
    from pollen.errors import ConfigError

    app = {"model": lambda: None, "load_data": lambda ctx: None}
    with pytest.raises(ConfigError, match="import your app by name"):
        simulate(app=app, parties=2, rounds=1, backend="process", runs_dir=str(tmp_path), progress=False)


def test_exact_party_sizes_for_the_hospitals(tmp_path):
    """--scheme sizes: the seed's 500 : 300 : 200 over every record of breast cancer's training split."""
    from pollen.compose import assemble
    from pollen.config import make_config

    cfg = make_config({"data": {"dataset": "breast_cancer", "parties": 3, "partition": "sizes", "sizes": "500:300:200",
                                "holdout": 0.0}})
    asm = assemble(cfg)
    sizes = [len(asm.party_data(p).train) for p in asm.party_ids]
    assert sum(sizes) == 455 and sizes == [228, 136, 91]  # 455 × (0.5, 0.3, 0.2), largest remainders
    exact = assemble(make_config({"data": {"dataset": "breast_cancer", "parties": 3, "partition": "sizes",
                                           "sizes": "200,120,80", "holdout": 0.0}}))
    assert [len(exact.party_data(p).train) for p in exact.party_ids] == [200, 120, 80]
