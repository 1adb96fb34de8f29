"""The configuration of a vertical run: one validated object, from a TOML file and flags.

::

    [vertical]
    model = "lr"            # lr: hetero logistic regression (Paillier); split: split learning
    parties = 2             # feature holders: party 0 is the guest (labels), 1 … the hosts
    epochs = 10
    [data]
    dataset = "breast_cancer"
    [run]
    name = "bc-vlr"

Hetero LR adds the arbiter (the Paillier key holder) as party ``parties``. Sections ``[app]``,
``[run]`` and ``[network]`` are the horizontal runs' (``pollen.config``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pollen.config import AppConfig, NetworkConfig, RunSection, load_toml, merge
from pollen.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class VerticalSection(_Section):
    """What is trained and how."""

    model: Literal["lr", "split"] = Field("lr", description="lr: hetero logistic regression with Paillier (guest, hosts, arbiter); split: split learning with the app's bottom and top models")
    parties: int = Field(2, ge=2, le=64, description="feature holders: party 0 is the guest (holds the labels), 1 … N-1 the hosts; lr adds the arbiter as party N")
    psi: bool = Field(True, description="align the parties' rows by private set intersection of their ids first (off: rows are already aligned)")
    epochs: int = Field(10, ge=1, le=10_000, description="passes over the aligned training rows")
    batch_size: int = Field(32, ge=1, description="mini-batch size")
    lr: float = Field(None, gt=0, le=100, description="learning rate (default: 0.2 for lr with approx margin5, else 0.05)")
    lr_decay: float = Field(0.9, gt=0, le=1, description="multiply the learning rate by this after every epoch")
    l2: float = Field(0.0, ge=0, description="L2 penalty on the weights (lr; the intercept is not penalised)")
    test_fraction: float = Field(0.25, ge=0, lt=1, description="aligned rows held out for evaluation (a seeded random split)")
    approx: Literal["margin5", "taylor", "poly5"] = Field("margin5", description="lr: the sigmoid's stand-in under Paillier: margin5 (a degree-5 polynomial in the margin fitted to the logistic loss's derivative on [-approx_low, approx_range]: 5 encryptions per row and party, logistic regression's accuracy), taylor (FATE's expansion at 0: one encryption per row and party, about a point less accurate), poly5 (the odd degree-5 fit on [-approx_range, approx_range])")
    approx_range: float = Field(None, gt=0, le=64, description="lr: upper end of the margins the polynomial is fitted on (default: 32 for margin5, 8 for poly5)")
    approx_low: float = Field(2.0, gt=0, le=64, description="lr with margin5: the fit's interval starts at -approx_low")
    key_bits: int = Field(2048, ge=512, le=8192, description="Paillier modulus bits (lr); below 2048 is for tests only")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="split: the optimizer of every bottom and the top model")
    noise: float = Field(0.0, ge=0, description="split: std of Gaussian noise each feature holder adds to its activations before they leave it")
    threads: int = Field(1, ge=1, le=256, description="threads for PSI's group operations on each party")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Fill the settings whose default depends on the model and the sigmoid's stand-in."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        approx = data.get("approx") or "margin5"
        lr_model = (data.get("model") or "lr") == "lr"
        if data.get("lr") is None:
            data["lr"] = 0.2 if lr_model and approx == "margin5" else 0.05
        if data.get("approx_range") is None:
            data["approx_range"] = 8.0 if approx == "poly5" else 32.0
        return data


class VerticalData(_Section):
    """Each party's data (its own app's load_data, or a built-in dataset split by columns)."""

    dataset: str | None = Field(None, description="built-in (without --app): breast_cancer, wine_binary, synthetic; split by columns across the parties (default: breast_cancer)")
    data_dir: str | None = Field(None, description="simulation with an app: each party's data path ('{party}' is replaced by the party id)")
    drop: float = Field(0.0, ge=0, lt=1, description="built-in datasets: fraction of rows each party lacks (seeded per party), so that PSI has work to do")


class VerticalConfig(_Section):
    """A whole vertical run."""

    app: AppConfig = AppConfig()
    vertical: VerticalSection = VerticalSection()
    data: VerticalData = VerticalData()
    network: NetworkConfig = NetworkConfig()
    run: RunSection = RunSection()

    @model_validator(mode="after")
    def _check(self) -> "VerticalConfig":
        if self.app.path is not None and self.data.dataset is not None:
            raise ValueError(f"data.dataset={self.data.dataset!r} names a built-in dataset, but app.path="
                             f"{self.app.path!r} loads its own data: drop one of them")
        return self

    @property
    def party_ids(self) -> list[str]:
        """Every party of the run: feature holders, then the arbiter (lr)."""
        n = self.vertical.parties + (1 if self.vertical.model == "lr" else 0)
        return [str(i) for i in range(n)]

    @property
    def guest(self) -> str:
        return "0"

    @property
    def hosts(self) -> list[str]:
        return [str(i) for i in range(1, self.vertical.parties)]

    @property
    def arbiter(self) -> str | None:
        return str(self.vertical.parties) if self.vertical.model == "lr" else None

    def role(self, party_id: str) -> str:
        """``guest``, ``host`` or ``arbiter``.

        Raises:
            ConfigError: an id that is no party of this run.
        """
        if party_id == self.guest:
            return "guest"
        if party_id in self.hosts:
            return "host"
        if party_id == self.arbiter:
            return "arbiter"
        raise ConfigError(f"party id {party_id!r} is not in this run (parties: {', '.join(self.party_ids)}: 0 is the "
                          f"guest{', ' + self.arbiter + ' the arbiter' if self.arbiter else ''})")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML-able, None values dropped)."""
        return {s: {k: v for k, v in sec.items() if v is not None} for s, sec in self.model_dump().items() if sec}


SECTIONS = {name: f.annotation for name, f in VerticalConfig.model_fields.items()}


def make_vertical_config(data: dict[str, Any] | None = None) -> VerticalConfig:
    """Validate a nested dict into a ``VerticalConfig``.

    Raises:
        ConfigError: unknown keys or bad values, each named with what is allowed.
    """
    data = data or {}
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"invalid vertical configuration: unknown section [{unknown[0]}]; allowed: {', '.join(SECTIONS)}")
    try:
        return VerticalConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"]) or "config"
            if e["type"] == "extra_forbidden" and len(e["loc"]) > 1 and e["loc"][0] in SECTIONS:
                lines.append(f"{key}: unknown key; allowed keys here: {', '.join(sorted(SECTIONS[e['loc'][0]].model_fields))}")
            else:
                lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("invalid vertical configuration:\n  " + "\n  ".join(lines)) from None


def vertical_config(config: Any = None, **overrides: Any) -> VerticalConfig:
    """A ``VerticalConfig`` from a VerticalConfig, a nested dict, a TOML path or None, plus
    flag-style overrides (``epochs=5``, ``parties=3``, ``name="x"``) or ``section.key`` ones.

    Raises:
        ConfigError: an unknown setting or a bad value.
    """
    if isinstance(config, VerticalConfig):
        base: dict[str, Any] = config.to_dict()
    elif config is None:
        base = {}
    elif isinstance(config, dict):
        base = dict(config)
    else:
        base = load_toml(config)
    return make_vertical_config(merge(base, overrides_to_sections(overrides)))


def flag_names() -> dict[str, tuple[str, str]]:
    """``flag_name`` → (section, key) for every setting (``model`` → vertical.model, ``name`` → run.name)."""
    out: dict[str, tuple[str, str]] = {}
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            name = {"app.path": "app", "run.name": "name"}.get(f"{section}.{key}", key)
            out.setdefault(name, (section, key))
    return out


def overrides_to_sections(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flag-style settings as nested sections.

    Raises:
        ConfigError: a name that is no setting (close ones suggested).
    """
    import difflib

    names = flag_names()
    out: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, _, key = name.partition(".")
        if not (key and section in SECTIONS and key in SECTIONS[section].model_fields):
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3)
                raise ConfigError(f"unknown vertical setting {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
            section, key = names[name]
        out.setdefault(section, {})[key] = value
    return out
