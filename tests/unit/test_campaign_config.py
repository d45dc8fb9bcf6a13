"""CampaignConfig: TOML loading, flag overrides, validation errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from host.campaign.config import DEFAULT_MAX_QUERIES, CampaignConfig
from host.errors import ConfigError


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.toml"
    path.write_text(text)
    return path


def test_toml_values_and_relative_paths(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, """
original = "models/o.tflite"
compressed = "/abs/c.tflite"
seeds = "seeds.npz"
max-queries = 300
timeout_s = 12
algo = "random"
mean = [127.5]
std = 127.5
resize = true
""")
    cfg = CampaignConfig.from_sources(toml)
    assert cfg.original == tmp_path / "models" / "o.tflite"
    assert cfg.compressed == Path("/abs/c.tflite")
    assert cfg.seeds == tmp_path / "seeds.npz"
    assert (cfg.max_queries, cfg.timeout_s, cfg.algo) == (300, 12.0, "random")
    assert cfg.mean == (127.5,) and cfg.std == (127.5,) and cfg.resize is True
    assert cfg.target == "local:" and cfg.seed == 0


def test_campaign_table_and_flags_override_file(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, """
[campaign]
original = "o.tflite"
compressed = "c.tflite"
seeds = "s.npz"
max_queries = 300
algo = "random"
""")
    cfg = CampaignConfig.from_sources(toml, {"max_queries": 50, "algo": None, "out": "elsewhere"})
    assert cfg.max_queries == 50  # the flag wins
    assert cfg.algo == "random"  # a flag not given (None) leaves the file's value
    assert cfg.out == Path("elsewhere")


def test_flags_alone_and_defaults() -> None:
    cfg = CampaignConfig.from_sources(None, {"original": "o", "compressed": "c", "seeds": "s"})
    assert cfg.max_queries == DEFAULT_MAX_QUERIES and cfg.algo == "dflare" and cfg.reference_target == "local:"


def test_target_spec_with_options_sets_delegate_and_threads() -> None:
    cfg = CampaignConfig.from_sources(None, {"original": "o", "compressed": "c", "seeds": "s",
                                             "target": "grpc://127.0.0.1:5000,delegate=xnnpack,threads=2"})
    assert (cfg.target, cfg.delegate, cfg.threads) == ("grpc://127.0.0.1:5000", "xnnpack", 2)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"max_queries": 0}, "max_queries"),
    ({"max_queries": "many"}, "max_queries"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"algo": "genetic"}, "algo"),
    ({"target": "http://x"}, "target"),
    ({"delegate": "tpu"}, "delegate"),
    ({"limit": 0}, "limit"),
    ({"scale": 0.5, "mean": [1.0]}, "scale"),
    ({"std": [0.0]}, "std"),
    ({"resize": "yes"}, "resize"),
    ({"mutation_threads": 0}, "mutation_threads"),
    ({"mutation_threads": 1.5}, "mutation_threads"),
    ({"reruns": 0}, "reruns"),  # refused here, before a store records it (the engine needs at least one)
])
def test_invalid_values_name_the_field(overrides: dict, field: str) -> None:
    base = {"original": "o", "compressed": "c", "seeds": "s"}
    with pytest.raises(ConfigError, match=field):
        CampaignConfig.from_sources(None, {**base, **overrides})


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'original = "o"\ncompressed = "c"\nseeds = "s"\nmax_querys = 5\n')
    with pytest.raises(ConfigError, match=r"unknown campaign setting 'max_querys'.*did you mean 'max_queries'"):
        CampaignConfig.from_sources(toml)


def test_missing_required_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required setting.*seeds.*--seeds"):
        CampaignConfig.from_sources(None, {"original": "o", "compressed": "c"})
    with pytest.raises(ConfigError, match="campaign file not found"):
        CampaignConfig.from_sources(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        CampaignConfig.from_sources(write_toml(tmp_path, "original = \n"))


def test_identity_ignores_output_and_paths_but_not_settings() -> None:
    a = CampaignConfig(Path("o"), Path("c"), Path("s"), out=Path("a"), fail_on_deviation=True)
    b = CampaignConfig(Path("/elsewhere/o"), Path("c2"), Path("s2"), out=Path("b"))
    assert a.canonical_json() == b.canonical_json() and a.digest() == b.digest()
    assert a.digest() != a.replace(max_queries=7).digest()
    assert a.digest() != a.replace(target="grpc://h:1").digest()
    assert a.digest() == a.replace(mutation_threads=2).digest()  # the same results on any number of threads
    assert '"algo":"dflare"' in a.canonical_json()
