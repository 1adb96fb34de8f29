"""One validated configuration object for a run, loadable from TOML and overridable by flags.

Every field has a default and a description (the description is the flag's ``--help``). Sections
map to TOML tables::

    [data]
    dataset = "fmnist"
    parties = 10

Unknown keys and out-of-range values are refused with a ``ConfigError`` that names the key and
the allowed values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pollen.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class AppConfig(_Section):
    """The user's app (docs/app.md): a Python file or module with model() and load_data(ctx)."""

    path: str | None = Field(None, description="your app: a .py file or an importable module with model() and load_data(ctx) (default: the built-in app of --dataset)")


class DataConfig(_Section):
    dataset: str | None = Field(None, description="built-in dataset (without --app): fmnist, mnist, emnist, femnist, cifar10, digits, breast_cancer, wine, synthetic (default: fmnist)")
    data_dir: str | None = Field(None, description="built-in dataset: its files' directory; app: each party's data path in simulation ('{party}' is replaced by the party id)")
    parties: int = Field(100, ge=1, le=1_000_000, description="number of parties")
    partition: Literal["iid", "dirichlet", "shards", "quantity", "natural", "sizes", "draw"] = Field("iid", description="how data held in one place is split across parties (the built-in datasets; ctx.partition in an app); draw: each party draws --party-size examples with replacement (more parties than examples)")
    party_size: int = Field(6, ge=1, description="'draw' split: examples each party draws uniformly with replacement (default_rng(seed).integers(0, N, (parties, size)))")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration for 'dirichlet' and 'quantity' (smaller = more skewed)")
    classes_per_party: int = Field(2, ge=1, description="classes per party for the 'shards' split")
    sizes: str | None = Field(None, description="'sizes' split: exact examples per party '500,300,200', or proportions of all data '5:3:2'")
    holdout: float = Field(0.1, ge=0, lt=1, description="fraction of each party's data held out for federated evaluation when the app gives none (0 disables)")


class ModelConfig(_Section):
    model: str | None = Field(None, description="model name (default: chosen from the dataset): fedavg_cnn, cifar_cnn, small_cnn, emnist_cnn, emnist_cnn_dropout, scatter_linear (the DP recipes' default for images: fixed ScatterNet features + linear), dp_cnn, mlp, logreg")
    augmentation: str = Field("none", description="training augmentation: none, cifar")


class TrainConfig(_Section):
    epochs: int = Field(1, ge=1, le=1000, description="local epochs per round")
    lr: float = Field(0.05, gt=0, le=100, description="local learning rate")
    batch_size: int = Field(32, ge=1, description="local mini-batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="local optimizer")
    momentum: float = Field(0.0, ge=0, lt=1, description="local SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="local L2 weight decay")
    loader_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes for a party's Dataset (in-memory tensors never use a DataLoader)")
    lr_decay: float = Field(1.0, gt=0, le=1, description="multiply the local lr by this after every round")


class FederationConfig(_Section):
    rounds: int = Field(30, ge=1, le=1_000_000, description="rounds of federated training")
    fraction: float | None = Field(None, gt=0, le=1, description="fraction of parties sampled each round (default: 10 parties, or all when fewer)")
    parties_per_round: int | None = Field(None, ge=1, description="parties sampled each round (overrides --fraction)")
    sampling: Literal["random", "balanced"] = Field("random", description="random: a fresh random draw each round; balanced: every party once per epoch of rounds, in a random order (the DP-SGD and DP-FTRL default)")
    min_fit_parties: int = Field(1, ge=1, description="fewest replies for a round to be aggregated")
    round_timeout: float | None = Field(None, gt=0, description="seconds to wait for replies before dropping stragglers")
    eval_every: int = Field(1, ge=1, description="evaluate the global model on the test set every N rounds")
    fed_eval_every: int = Field(0, ge=0, description="federated evaluation on parties' held-out splits every N rounds (0: only after the last round)")
    max_empty_rounds: int = Field(5, ge=0, description="stop the run (non-zero exit, with the reason) after this many rounds in a row aggregated nothing (0: never)")
    fed_eval_parties: int = Field(1000, ge=1, description="federated evaluation asks at most this many parties, drawn by the run seed (all of them when fewer exist)")
    stream_aggregate: Literal["auto", "on", "off"] = Field("auto", description="fold each update into a running sum as it arrives instead of holding all of them (auto: in arrival order when a round's updates together exceed 256 MB, below that in party order, the same sum as off; needs a mean-based aggregator)")


class StrategyConfig(_Section):
    """Strategy, server optimizer, asynchronous mode and per-round schedules (docs/strategies.md)."""

    name: str = Field("fedavg", description="aggregation strategy: fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad, scaffold, fednova, fedbn, fedper, pfedme, ditto, fedbuff, fedasync (and robust ones)")
    server_lr: float | None = Field(None, gt=0, description="server learning rate (default per strategy: 1.0; 0.01 for fedadam/fedyogi/fedadagrad; 0.6 for fedasync's mixing α)")
    proximal_mu: float | None = Field(None, ge=0, description="FedProx proximal term μ (default 0.01 for fedprox; set it to add the term to any strategy)")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="fedavgm server momentum β")
    ema: float = Field(0.0, ge=0, lt=1, description="model = moving average of iterates, decay β (0: off)")
    beta1: float = Field(0.9, ge=0, lt=1, description="fedadam/fedyogi/fedadagrad first-moment decay β1")
    beta2: float = Field(0.99, ge=0, lt=1, description="fedadam/fedyogi second-moment decay β2")
    tau: float = Field(1e-3, gt=0, description="fedadam/fedyogi/fedadagrad adaptivity τ")
    local_layers: str | None = Field(None, description="fedper: comma-separated module names kept on each party (default: the last layer); fedbn: normalisation layers kept local besides BatchNorm (e.g. layer_norm)")
    personal_lambda: float | None = Field(None, ge=0, description="pfedme / ditto: λ, the pull between a party's personal model and the global one (default: 15 for pfedme, 0.1 for ditto)")
    personal_lr: float | None = Field(None, gt=0, description="pfedme / ditto: the personal model's lr (default: --lr)")
    personal_steps: int = Field(5, ge=1, le=100, description="pfedme: K, gradient steps on the personal model per mini-batch")
    async_buffer: int = Field(10, ge=1, description="fedbuff: updates K buffered per server step")
    async_concurrency: int | None = Field(None, ge=1, description="fedbuff/fedasync: parties training at once (default: parties per round)")
    max_staleness: int = Field(20, ge=0, description="fedbuff/fedasync: discard updates staler than this many server steps")
    staleness: Literal["constant", "polynomial", "hinge"] = Field("polynomial", description="fedbuff/fedasync staleness weight s(τ)")
    staleness_a: float = Field(0.5, ge=0, description="staleness exponent (polynomial: (1+τ)^-a) or slope (hinge)")
    staleness_b: float = Field(4.0, ge=0, description="hinge staleness: updates up to b steps stale keep full weight")
    party_speed: str | None = Field(None, description="simulated party slowness factors: constant, lognormal:SIGMA or uniform:LO:HI (enables a virtual clock)")
    dropout: float = Field(0.0, ge=0, lt=1, description="simulated probability that a party drops a task (virtual clock)")
    step_seconds: float | None = Field(None, gt=0, description="virtual seconds per local step (default: as measured)")
    lr_schedule: Literal["constant", "step", "exp", "cosine"] = Field("constant", description="local learning-rate schedule over rounds")
    lr_gamma: float = Field(0.5, gt=0, le=1, description="decay factor of the step and exp lr schedules")
    lr_step_rounds: int = Field(10, ge=1, description="rounds between decays of the step lr schedule")
    lr_min: float = Field(0.0, ge=0, description="final learning rate of the cosine schedule")
    epochs_schedule: str | None = Field(None, description="local epochs by round, e.g. '1:1,10:2' (2 epochs from round 10)")
    config_hook: str | None = Field(None, description="user function fn(round, RoundConfig) -> RoundConfig, as path/to/file.py:fn or module:fn")
    byzantine_f: int | None = Field(None, ge=0, description="malicious updates a robust aggregator tolerates per round (default: round(malicious_fraction × parties per round), 0 without an attack)")
    trim_ratio: float | None = Field(None, ge=0, lt=0.5, description="trimmed_mean: fraction cut from each end per coordinate (default: byzantine_f / parties per round, 0.1 when f = 0)")
    multikrum_m: int | None = Field(None, ge=1, description="multikrum: best-scored updates averaged (default: n − byzantine_f)")
    norm_bound: float | None = Field(None, gt=0, description="normbound: L2 norm each update is clipped to (default: the round's median update norm)")


class PrivacyConfig(_Section):
    """Differential privacy, secure aggregation and homomorphic encryption (docs/privacy-dp.md, …)."""

    # --- differential privacy (pollen/privacy: accountant, client_dp, dpsgd, checks) ---
    dp_sgd: bool = Field(False, description="record-level DP: DP-SGD (Opacus) with Poisson batches in each party's local training")
    noise_multiplier: float | None = Field(None, ge=0, description="DP-SGD noise std / max-grad-norm (default: from --target-epsilon)")
    max_grad_norm: float = Field(1.0, gt=0, description="DP-SGD per-example gradient clipping norm")
    dp_sample_rate: float | None = Field(None, gt=0, le=1, description="DP-SGD Poisson rate (default: batch/records)")
    target_epsilon: float | None = Field(None, gt=0, description="privacy budget ε of the whole run (calibrates the noise; a party past it stops)")
    delta: float | None = Field(None, gt=0, lt=1, description="δ of (ε, δ)-DP for --dp-sgd/--client-dp (e.g. 1e-5 < 1/records)")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="rdp (Rényi DP), or prv (DP-SGD only)")
    client_dp: Literal["off", "central", "local", "distributed", "ftrl"] = Field("off", description="party-level DP: central, local, distributed (--secagg) or ftrl")
    client_dp_noise: Literal["gaussian", "skellam"] | None = Field(None, description="gaussian, or skellam (default under --secagg)")
    client_noise_multiplier: float | None = Field(None, ge=0, description="party-level DP noise std / clip norm (default: from --target-epsilon)")
    clip_norm: float = Field(1.0, gt=0, description="party-level DP: L2 bound on each party's update (initial value when adaptive)")
    adaptive_clip: bool = Field(False, description="adapt the clip norm to a quantile of update norms (Andrew et al. 2019)")
    target_quantile: float = Field(0.5, gt=0, lt=1, description="adaptive clipping: fraction of updates that should be under the clip norm")
    clip_lr: float = Field(0.2, gt=0, description="adaptive clipping: geometric learning rate of the clip norm")
    clip_count_stddev: float | None = Field(None, gt=0, description="adaptive clipping: noise std on the clipped count (default: per round / 20)")

    audit_canaries: int = Field(0, ge=0, le=100_000, description="one-run audit: canaries inserted (0: off)")
    audit_confidence: float = Field(0.95, gt=0, lt=1, description="the audit's confidence")

    he: bool = Field(False, description="CKKS-encrypt each update (TenSEAL); the server sums ciphertexts")
    he_keys: str | None = Field(None, description="directory made by 'pollen keys' (public.ctx for the server; parties also need secret.ctx)")

    # --- secure aggregation (pollen/privacy/secagg, docs/secure-aggregation.md) ---
    secagg: bool = Field(False, description="secure aggregation (SecAgg+): parties mask their updates; the coordinator learns only the sum")
    secagg_threshold: float = Field(2 / 3, gt=0, le=1, description="SecAgg+: share holders t/(k+1) needed to unmask (> 0.5)")
    secagg_neighbours: int | None = Field(None, ge=2, description="SecAgg+: neighbour graph degree k (even; default: all of the round's parties)")
    secagg_bits: Literal[32, 64] = Field(32, description="SecAgg+: masked values live in Z_2^bits (32 costs as much uplink as float32)")
    secagg_clip: float = Field(1.0, gt=0, description="SecAgg+: each update coordinate is clipped to [-c, c] before quantisation")
    secagg_trust_coordinator: bool = Field(False, description="SecAgg+: allow t ≤ half a neighbourhood (secure only if the coordinator is honest)")
    secagg_dropout: float = Field(0.0, ge=0, lt=1, description="simulation: fraction of parties dropping out after masking")


Codec = Literal["none", "fp16", "bf16", "int8", "qsgd", "terngrad", "sign", "topk"]


class CompressionConfig(_Section):
    """Update codecs, client-side pruning, downlink compression and mixed-precision training."""

    codec: Codec = Field("none", description="uplink codec for model updates: none, fp16, bf16, int8, qsgd, terngrad, sign (1 bit + scale; use with --error-feedback), topk")
    qsgd_bits: int = Field(4, ge=2, le=8, description="bits per value for --codec qsgd (2 … 8)")
    codec_block: int = Field(0, ge=0, description="values sharing one scale in int8/qsgd/terngrad/sign (0: one per tensor; qsgd: 512)")
    topk_fraction: float = Field(0.01, gt=0, le=1, description="fraction of each tensor's entries kept by --codec topk")
    topk_values: Literal["fp32", "fp16", "bf16", "int8"] = Field("fp32", description="how top-k (and pruning) sends the kept values")
    error_feedback: bool = Field(False, description="keep what the codec dropped on each party and add it to its next update")
    terngrad_clip: float = Field(0.0, ge=0, description="TernGrad: clip each tensor at this many standard deviations first (0: off; paper: 2.5; biased when on)")
    downlink: Literal["none", "fp16", "bf16", "int8"] = Field("none", description="codec for the global model sent to parties")
    prune: Literal["none", "magnitude", "channel"] = Field("none", description="client-side pruning of the local model before upload")
    prune_fraction: float = Field(0.5, ge=0, lt=1, description="fraction of each weight tensor's entries (or channels) pruned")
    autocast: Literal["off", "bf16", "fp16"] = Field("off", description="mixed-precision local training with torch.autocast on the CPU")

    @model_validator(mode="before")
    @classmethod
    def _none_is_a_name(cls, data: Any) -> Any:
        # the CLI turns a flag value "none" into None; here "none"/"off" are real choices
        if isinstance(data, dict):
            off = {"codec": "none", "downlink": "none", "prune": "none", "autocast": "off"}
            data = {k: (off[k] if k in off and v is None else v) for k, v in data.items()}
        return data


class NetworkConfig(_Section):
    """The deployed federation over gRPC (``pollen server`` / ``pollen client``; docs/deployment.md)."""

    host: str = Field("0.0.0.0", description="address the coordinator listens on (127.0.0.1 keeps it on this machine)")
    port: int = Field(9394, ge=1, le=65535, description="TCP port of the coordinator's gRPC service")
    min_parties: int = Field(1, ge=1, description="parties that must be connected before a round starts (a round waits for them)")
    join_timeout: float | None = Field(3600.0, gt=0, description="seconds to wait for --min-parties before round 1; then the run fails with the parties missing named")
    quorum_timeout: float | None = Field(300.0, gt=0, description="seconds a later round waits for --min-parties (logged every 30 s with the parties missing); then it goes on with those connected")
    heartbeat_interval: float = Field(5.0, gt=0, le=3600, description="seconds between party heartbeats; a party silent for two intervals is dropped")
    certs_dir: str = Field("certs", description="folder with ca.pem, server.pem/key and party-<id>.pem/key (made by 'pollen certs')")
    revoked: str | None = Field(None, description="file of revoked party ids or certificate serials, one per line (default: <certs-dir>/revoked.txt)")
    insecure: bool = Field(False, description="no TLS, no authentication: local experiments only (prints a warning)")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="serve Prometheus /metrics on this port (needs the 'metrics' extra)")
    max_message_mb: float = Field(2048.0, gt=0, description="largest task or reply a peer may send, in MB (bigger ones are refused)")
    admit_rate: float = Field(20.0, ge=0, description="new connections per second the coordinator's front door admits (a flood of connections waits in the kernel's queue instead of taking CPU); 0: no front door, gRPC owns the port")


class AttackConfig(_Section):
    """Simulated malicious parties, for evaluating robust aggregation (docs/robustness.md)."""

    malicious_fraction: float = Field(0.0, ge=0, lt=1, description="fraction of all parties that are malicious (chosen by the run seed)")
    attack: Literal["none", "signflip", "gaussian", "labelflip", "alie", "ipm", "scaling"] = Field("none", description="what malicious parties do: signflip, gaussian, labelflip, alie, ipm, scaling")
    attack_scale: float | None = Field(None, gt=0, description="signflip sends −scale·Δ (default 1); scaling boosts its label-flipped Δ by scale (default 10)")
    attack_sigma: float = Field(1.0, gt=0, description="gaussian: standard deviation of the random update each malicious party sends")
    ipm_epsilon: float = Field(0.5, gt=0, description="ipm: malicious parties send −ε × the mean of their benign updates")
    alie_z: float | None = Field(None, description="alie: the z of mean − z·std (default: z_max from n and f, Baruch et al. 2019)")

    @model_validator(mode="after")
    def _check(self) -> "AttackConfig":
        if (self.attack == "none") != (self.malicious_fraction == 0):
            raise ValueError(f"attack={self.attack!r} with malicious_fraction={self.malicious_fraction}: "
                             "set both (e.g. --malicious-fraction 0.2 --attack alie) or neither")
        return self


class SimulationConfig(_Section):
    """Virtual parties on this machine."""

    backend: Literal["inline", "process", "ray"] = Field("inline", description="inline: one process, all cores per party; process: a pool of worker processes; ray: Ray actors on this machine or a cluster (needs the 'ray' extra)")
    workers: int | None = Field(None, ge=1, description="worker processes (process backend) or Ray actors (ray backend) (default: cores, or the cluster's CPUs / --party-cpus)")
    party_cpus: float = Field(1.0, gt=0, description="ray: CPUs each party task (actor) reserves; fractions allowed")
    party_gpus: float = Field(0.0, ge=0, description="ray: GPUs each party task (actor) reserves; fractions allowed (0.25: four actors share a GPU)")
    ray_address: str | None = Field(None, description="ray: an existing cluster to join (HOST:PORT of its head, or 'auto'); default: start a local Ray for this run and stop it after")
    party_cache: int | None = Field(None, ge=1, description="simulated parties (data and state) kept in memory per process; the others' state waits on disk (default: 4 × parties per round, at least 256)")
    threads: int | None = Field(None, ge=1, description="torch threads per training process (default: cores, or 1 per worker)")


class RunSection(_Section):
    name: str | None = Field(None, description="run name; output goes to <runs_dir>/<name> (default: dataset-partition-timestamp)")
    runs_dir: str = Field("runs", description="directory that holds run directories")
    seed: int = Field(0, ge=0, description="seed of every random choice in the run")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$", description="where models train and evaluate: auto (cuda when available), cpu, cuda, cuda:N")
    progress: bool = Field(True, description="show a live progress display")


class RunConfig(_Section):
    """The whole run."""

    app: AppConfig = AppConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    federation: FederationConfig = FederationConfig()
    strategy: StrategyConfig = StrategyConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    compression: CompressionConfig = CompressionConfig()
    network: NetworkConfig = NetworkConfig()
    attack: AttackConfig = AttackConfig()
    simulation: SimulationConfig = SimulationConfig()
    run: RunSection = RunSection()

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        f, d = self.federation, self.data
        if f.parties_per_round is not None and f.parties_per_round > d.parties:
            raise ValueError(f"federation.parties_per_round={f.parties_per_round} exceeds data.parties={d.parties}")
        if f.min_fit_parties > d.parties:
            raise ValueError(f"federation.min_fit_parties={f.min_fit_parties} exceeds data.parties={d.parties}")
        if (d.partition == "sizes") != (d.sizes is not None):
            raise ValueError("data.partition='sizes' and data.sizes go together: --scheme sizes --sizes 500,300,200 "
                             "(exact examples per party) or --sizes 5:3:2 (proportions of all the data)")
        if self.app.path is not None and d.dataset is not None:
            raise ValueError(f"data.dataset={d.dataset!r} names a built-in dataset, but app.path={self.app.path!r} "
                             "loads its own data: drop --dataset (or drop --app to train the built-in one)")
        if self.app.path is not None and self.model.model is not None:
            raise ValueError(f"model.model={self.model.model!r} names a built-in model, but your app's model() "
                             "defines the model: drop --model")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML-able, None values dropped)."""
        return {s: {k: v for k, v in sec.items() if v is not None} for s, sec in self.model_dump().items() if sec}


SECTIONS: dict[str, type[_Section]] = {name: f.annotation for name, f in RunConfig.model_fields.items()}  # type: ignore[misc]


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            section = e["loc"][0] if len(e["loc"]) > 1 else None
            allowed = sorted(SECTIONS[section].model_fields) if section in SECTIONS else sorted(SECTIONS)
            lines.append(f"{key}: unknown key; allowed keys here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            lines.append(f"{key}: {e['msg']} (got {got!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def make_config(data: dict[str, Any] | None = None) -> RunConfig:
    """Validate a nested dict into a ``RunConfig``.

    Raises:
        ConfigError: unknown keys or bad values, each named.
    """
    data = data or {}
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"invalid configuration:\n  {unknown[0]}: unknown section; allowed sections: {', '.join(SECTIONS)}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


# Paths in a TOML file that are read relative to the file's folder (not the current directory).
FILE_RELATIVE = (("app", "path"), ("data", "data_dir"))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a nested dict; the paths in ``FILE_RELATIVE`` (the app, the data
    folder) that are relative are made relative to the file's folder, so a project's config.toml
    works from any directory.

    Raises:
        ConfigError: missing file or TOML syntax error (with the line).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    for section, key in FILE_RELATIVE:
        values = data.get(section)
        value = values.get(key) if isinstance(values, dict) else None
        if not isinstance(value, str) or Path(value).expanduser().is_absolute():
            continue
        if section == "app" and not (value.endswith(".py") or "/" in value):
            continue  # a module name, not a path
        values[key] = str(p.parent.resolve() / value)
    return data


def absolute_paths(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the ``FILE_RELATIVE`` paths made absolute from the current directory (what a
    run folder's config.toml records, so that it reads the same from anywhere)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, key in FILE_RELATIVE:
        value = out.get(section, {}).get(key)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            if section == "app" and not (value.endswith(".py") or "/" in value):
                continue
            out[section][key] = str(Path(value).resolve())
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: ``overrides`` wins."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def flag_fields() -> dict[str, tuple[str, str]]:
    """Map ``--flag-name`` → (section, key) for every config field; flag names are unique."""
    out: dict[str, tuple[str, str]] = {}
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            flag = key.replace("_", "-")
            if section == "strategy" and key == "name":
                flag = "strategy"
            elif section == "run" and key == "name":
                flag = "name"
            elif section == "model" and key == "model":
                flag = "model"
            elif section == "app" and key == "path":
                flag = "app"
            if flag in out:
                raise RuntimeError(f"flag --{flag} defined twice ({out[flag]} and {(section, key)})")
            out[flag] = (section, key)
    return out


def flags_to_sections(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flag-style settings (``rounds=10``, ``parties_per_round=5``, ``dp_sgd=True``, or
    ``"federation.rounds"``) as a nested dict of sections, like a TOML file.

    Raises:
        ConfigError: a name that is no flag (the closest ones are suggested).
    """
    import difflib

    flags = flag_fields()
    out: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, _, key = name.partition(".")
        if key and section in SECTIONS and key in SECTIONS[section].model_fields:
            out.setdefault(section, {})[key] = value
            continue
        flag = name.replace("_", "-")
        if flag not in flags:
            close = difflib.get_close_matches(flag, flags, n=3)
            hint = f"; did you mean {', '.join(c.replace('-', '_') for c in close)}?" if close else ""
            raise ConfigError(f"unknown setting {name!r}{hint} (settings are the command-line flags with '_' for '-', "
                              "or 'section.key')")
        section, key = flags[flag]
        out.setdefault(section, {})[key] = value
    return out


def to_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of plain values as TOML (the resolved config of a run)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'

    parts = []
    for section, values in data.items():
        parts.append(f"[{section}]")
        parts += [f"{k} = {fmt(v)}" for k, v in values.items() if v is not None]
        parts.append("")
    return "\n".join(parts)
