"""Any supervised task and any data form an app may hand over: Datasets and DataLoaders, regression,
multi-label, the app's own train/evaluate, and metrics that cannot be averaged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pollen.simulation import simulate


def blobs(n: int, seed: int, classes: int = 2, features: int = 6):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, features, generator=g), y


def run(app, tmp_path, name: str, **kw):
    kw = {"parties": 3, "rounds": 4, "lr": 0.1, "holdout": 0.0, **kw}
    return simulate(app=app, runs_dir=str(tmp_path), name=name, progress=False, **kw)


def classifier(classes: int = 2, features: int = 6):
    return lambda: torch.nn.Sequential(torch.nn.Linear(features, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes))


def test_dataset_and_dataloader_apps_learn_like_the_tensor_app(tmp_path):
    def tensors(ctx):
        return blobs(80, ctx.party_index)

    def dataset(ctx):
        return TensorDataset(*blobs(80, ctx.party_index))

    def loader(ctx):  # the app's own DataLoader: its batch size and order are used as they are
        return DataLoader(TensorDataset(*blobs(80, ctx.party_index)), batch_size=32, shuffle=False)

    test = {"server_data": lambda ctx: blobs(200, 1000)}
    results = {}
    for name, load in (("tensors", tensors), ("dataset", dataset), ("loader", loader)):
        app = SimpleNamespace(model=classifier(), load_data=load, **test)
        results[name] = run(app, tmp_path, name)
        assert results[name].history[-1]["accuracy"] > 0.9, name
        assert results[name].history[-1]["num_examples"] == 240
    # the Dataset path shuffles with a DataLoader, not the tensor path's permutation: both learn the same task
    assert abs(results["dataset"].history[-1]["accuracy"] - results["tensors"].history[-1]["accuracy"]) < 0.05


def test_regression_app_records_its_metrics_and_minimises_the_primary_one(tmp_path):
    w = torch.tensor([1.5, -2.0, 0.5])

    def data(seed, n):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, generator=g)
        return x, (x @ w + 0.1 * torch.randn(n, generator=g)).unsqueeze(1)  # (N, 1) targets

    app = SimpleNamespace(model=lambda: torch.nn.Linear(3, 1), load_data=lambda ctx: data(ctx.party_index, 100),
                          server_data=lambda ctx: data(777, 300), loss=torch.nn.MSELoss(),
                          metrics=["mae", "rmse", "r2"], primary_metric="mae")
    res = run(app, tmp_path, "reg", rounds=6, holdout=0.2)
    last = res.history[-1]
    assert last["mae"] < 0.2 and last["r2"] > 0.95 and "accuracy" not in last
    assert last["fed_mae"] < 0.2 and set(last["fed_mae_parties"]) == {"0", "1", "2"}
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["primary_metric"] == "mae" and summary["higher_is_better"] is False
    assert "rmse" in summary["metric_notes"] and "mae" not in summary["metric_notes"]  # rmse of parties ≠ pooled
    report = (res.run_dir / "report.md").read_text()
    assert "| mae |" in report and "example-weighted mean of per-party values" in report
    from pollen.telemetry.report import compare

    row = compare([res.run_dir]).splitlines()[2]
    assert "| mae |" in row  # compare names the metric it shows


def test_binary_auc_is_combined_over_parties_and_skips_parties_where_it_is_undefined(tmp_path):
    def load(ctx):
        x, y = blobs(60, ctx.party_index)
        if ctx.party_id == "2":
            y = torch.zeros_like(y)  # one class only here: its AUC is undefined
        return (x, y.float()), (x, y.float())

    app = SimpleNamespace(model=classifier(1), load_data=load, loss=torch.nn.BCEWithLogitsLoss(),
                          metrics=["auc", "f1"], primary_metric="auc")

    # BCE wants float targets shaped like the (N, 1) logits
    def load2(ctx):
        (x, y), _ = load(ctx)
        return (x, y[:, None]), (x, y[:, None])

    app.load_data = load2
    res = run(app, tmp_path, "auc")
    last = res.history[-1]
    per_party = last["fed_auc_parties"]
    assert per_party["2"] is None and per_party["0"] > 0.9  # undefined where only one class is held
    assert last["fed_auc"] == pytest.approx(np.mean([per_party["0"], per_party["1"]]))  # equal weights (60 each)


def test_multilabel_app(tmp_path):
    def load(ctx):
        x, _ = blobs(90, ctx.party_index, features=4)
        y = torch.stack([(x[:, 0] > 0), (x[:, 1] > 0)], 1).float()  # (N, 2) 0/1 labels
        return x, y

    app = SimpleNamespace(model=lambda: torch.nn.Linear(4, 2), load_data=load, loss=torch.nn.BCEWithLogitsLoss(),
                          metrics=["multilabel_accuracy", "multilabel_f1"], server_data=lambda ctx: load(SimpleNamespace(party_index=9)))
    res = run(app, tmp_path, "ml", rounds=5, lr=0.5)
    assert res.history[-1]["multilabel_accuracy"] > 0.85


def test_the_apps_own_train_and_evaluate_take_over_the_loop(tmp_path):
    calls = {"train": [], "evaluate": 0}

    def train(model, data, config, ctx):
        x, y = data  # what load_data returned (the training split)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        for _ in range(config.epochs * 3):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        calls["train"].append((ctx.party_id, config.round))
        return {"loss": loss.item(), "num_examples": len(y)}

    def evaluate(model, data, ctx):
        x, y = data
        calls["evaluate"] += 1
        return {"loss": 0.0, "score": float((model(x).argmax(1) == y).float().mean())}

    app = SimpleNamespace(model=classifier(), load_data=lambda ctx: blobs(50, ctx.party_index), train=train,
                          evaluate=evaluate, server_data=lambda ctx: blobs(100, 50), metrics={},
                          primary_metric=("score", True))
    res = run(app, tmp_path, "own", lr=0.5)
    assert sorted(calls["train"])[:3] == [("0", 1), ("0", 2), ("0", 3)] and len(calls["train"]) == 12
    last = res.history[-1]
    assert last["score"] > 0.9 and last["party_metrics"]["train_loss"] < 0.5 and calls["evaluate"] >= 4
