import pytest

from pollen.cli import build_parser, config_from_args
from pollen.config import RunConfig, flag_fields, load_toml, make_config, to_toml
from pollen.errors import ConfigError


def test_defaults_are_the_documented_job():
    """The default job is W1 (BENCHMARKS.md): Fashion-MNIST, 100 IID parties, 10 a round, 30 rounds."""
    from pollen.compose import assemble
    from pollen.models.builtin import dataset_name

    c = make_config({})
    assert (dataset_name(c), c.data.parties, c.data.partition, c.federation.rounds) == ("fmnist", 100, "iid", 30)
    assert assemble(c).strategy.sampler.sample_size(c.data.parties) == 10
    few = make_config({"data": {"parties": 4}})
    assert assemble(few).strategy.sampler.sample_size(4) == 4  # every party when there are fewer than 10


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError, match=r"data.partiez: unknown key; allowed keys here: .*parties"):
        make_config({"data": {"partiez": 3}})
    with pytest.raises(ConfigError, match="unknown section"):
        make_config({"dta": {}})


def test_out_of_range_and_bad_choice_are_named():
    with pytest.raises(ConfigError) as e:
        make_config({"federation": {"rounds": 0}, "data": {"partition": "random"}})
    msg = str(e.value)
    assert "federation.rounds" in msg and "data.partition" in msg and "'dirichlet'" in msg


def test_cross_field_check():
    with pytest.raises(ConfigError, match="parties_per_round"):
        make_config({"data": {"parties": 5}, "federation": {"parties_per_round": 6}})


def test_toml_round_trip(tmp_path):
    c = make_config({"data": {"parties": 7, "alpha": 0.1}, "train": {"lr": 0.01}})
    p = tmp_path / "c.toml"
    p.write_text(to_toml(c.to_dict()))
    assert make_config(load_toml(p)) == c


def test_bad_toml_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[data\nparties = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_toml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "none.toml")


def test_flags_override_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\nparties = 7\ndataset = "digits"\n[federation]\nrounds = 4\n')
    args = build_parser().parse_args(["simulate", "--config", str(p), "--rounds", "9", "--scheme", "dirichlet"])
    c = config_from_args(args)
    assert (c.data.parties, c.data.dataset, c.federation.rounds, c.data.partition) == (7, "digits", 9, "dirichlet")


def test_every_field_has_a_unique_flag_and_a_description():
    flags = flag_fields()
    assert len(set(flags.values())) == len(flags)
    from pollen.config import SECTIONS

    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            assert field.description, f"{section}.{key} has no description"
    assert isinstance(RunConfig(), RunConfig)
