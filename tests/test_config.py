"""Config loading: YAML -> frozen dataclasses, overrides, all errors at once."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mmray.config import config_hash, load_config, parse_overrides, to_dict
from mmray.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass(frozen=True)
class Train:
    epochs: int
    model: Literal["early_fusion", "late_fusion"] = "early_fusion"
    modalities: tuple[str, ...] = ("clinical",)
    optim: Optim = field(default_factory=Optim)
    seed: int | None = None
    store: Path = Path("store")
    extra: dict[str, float] = field(default_factory=dict)

    def validate(self):
        if self.epochs < 1:
            yield ("epochs", f"must be at least 1, got {self.epochs}")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_yaml_becomes_frozen_dataclass(tmp_path):
    path = write(tmp_path, "epochs: 3\nmodalities: [clinical, expression]\noptim: {lr: 0.01}\n")
    cfg = load_config(Train, path)
    assert cfg.epochs == 3
    assert cfg.modalities == ("clinical", "expression")
    assert cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 0.0
    assert cfg.store == Path("store")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4


def test_overrides_apply_on_top_with_yaml_typed_values(tmp_path):
    path = write(tmp_path, "epochs: 3\n")
    cfg = load_config(Train, path, ["epochs=7", "optim.lr=5e-4", "model=late_fusion", "seed=11",
                                    "modalities=[wsi,ct]", "extra.alpha=0.5"])
    assert (cfg.epochs, cfg.optim.lr, cfg.model, cfg.seed) == (7, 5e-4, "late_fusion", 11)
    assert cfg.modalities == ("wsi", "ct")
    assert cfg.extra == {"alpha": 0.5}


def test_every_error_is_reported_at_once_with_its_path(tmp_path):
    path = write(tmp_path, "epochs: zero\nmodel: mlp\noptim: {lrr: 0.1, weight_decay: yes}\nunknown_key: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Train, path, ["bad-override"])
    problems = dict(exc.value.problems)
    assert set(problems) == {"bad-override", "epochs", "model", "optim.lrr", "optim.weight_decay", "unknown_key"}
    assert "did you mean 'lr'" in problems["optim.lrr"]
    assert "'early_fusion'" in problems["model"]
    assert str(path) in str(exc.value)
    assert "6 problem(s)" in str(exc.value)


def test_missing_required_and_validate_hook(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(Train, write(tmp_path, "model: early_fusion\n"))
    assert exc.value.problems == [("epochs", "required but missing")]
    with pytest.raises(ConfigError) as exc:
        load_config(Train, None, ["epochs=0"])
    assert exc.value.problems == [("epochs", "must be at least 1, got 0")]


def test_bad_yaml_and_missing_file_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Train, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Train, write(tmp_path, "epochs: [1,\n"))
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(Train, write(tmp_path, "- 1\n- 2\n"))


def test_parse_overrides_nests_keys():
    tree, problems = parse_overrides(["a.b.c=1", "a.d=x", "e=", "=3"])
    assert tree == {"a": {"b": {"c": 1}, "d": "x"}, "e": ""}
    assert problems == [("=3", "override must look like key=value, e.g. train.epochs=5")]


def test_to_dict_and_hash_are_stable():
    a = load_config(Train, None, ["epochs=2"])
    b = load_config(Train, None, ["epochs=2"])
    c = load_config(Train, None, ["epochs=3"])
    assert to_dict(a)["modalities"] == ["clinical"] and to_dict(a)["store"] == "store"
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_config_error_survives_pickling():
    err = ConfigError([("a.b", "bad")], source="x.yaml")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ConfigError)
    assert back.problems == [("a.b", "bad")] and back.source == "x.yaml"
    assert str(back) == str(err)
