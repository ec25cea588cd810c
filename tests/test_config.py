"""pcam_core.config: the contract of the experiment config. It is the one source of every default, refuses
unknown keys and values out of range with an error naming them, is frozen, and comes back equal from its JSON
(a run's config.json) and from a checkpoint."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pcam_core.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from pcam_core.config import (AugmentConfig, DataConfig, ExperimentConfig, ModelConfig, TrackingConfig, TrainConfig)
from pcam_core.models import create_model
from pcam_core.runs import create_run

# A config with a value other than the default in every section.
CUSTOM = ExperimentConfig(
    data=DataConfig(path="/data/pcam", format="h5", valid_frac=0.2, split_seed=3, num_workers=2, cache="no",
                    cache_max_gb=0.5, label_overrides="reviews.csv", folds=5, fold=2),
    augment=AugmentConfig(symmetries=False, stain=0.05, brightness=0.2, contrast=0.0, saturation=0.3, hue=0.1, shift=4, mixup=0.3),
    model=ModelConfig(name="resnet18", weights="/w/r18.pt", dropout=0.25),
    train=TrainConfig(epochs=5, batch_size=64, lr=1e-3, weight_decay=0.0, optimizer="adam", schedule="cosine",
                      warmup_frac=0.0, pos_weight=1.5, label_smoothing=0.1, ema_decay=0.0, device="cpu", amp=False,
                      channels_last=False, compile=True, seed=7, max_steps=100, early_stopping=3, monitor="loss",
                      keep="best", log_every=5, checkpoint_minutes=2.5, teacher="/runs/cv", distil=0.3),
    tracking=TrackingConfig(mlflow_uri="sqlite:///mlflow.db", mlflow_experiment="pcam-test"),
    world_size=2,
    name="custom",
)


def test_create_model_dropout_defaults_to_the_model_config():
    assert inspect.signature(create_model).parameters["dropout"].default == ModelConfig().dropout
    rates = [m.p for m in create_model("pcamnet").modules() if isinstance(m, nn.Dropout)]
    assert rates and all(p == ModelConfig().dropout for p in rates)


def test_every_field_of_the_custom_config_differs_from_its_default():
    """So that the round trips below carry every field, not only defaults that would come back anyway."""
    default = ExperimentConfig().to_dict()
    custom = CUSTOM.to_dict()
    same = [f"{section}.{key}" for section, values in custom.items() if isinstance(values, dict)
            for key, value in values.items() if default[section][key] == value]
    assert same == []


def test_round_trip_through_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(CUSTOM.to_json())
    assert ExperimentConfig.from_json(path) == CUSTOM
    assert json.loads(path.read_text())["global_batch_size"] == 128  # written for readers, derived on reading


def test_round_trip_through_a_run_folder_and_a_checkpoint(tmp_path):
    run = create_run(tmp_path, CUSTOM, run_id="r")
    assert run.config() == CUSTOM
    save_checkpoint(tmp_path / "c.pt", {"config": CUSTOM.to_dict(), "model": {"w": torch.zeros(2)}, "epoch": 1})
    assert checkpoint_config(load_checkpoint(tmp_path / "c.pt")) == CUSTOM  # loads with weights_only=True


@settings(max_examples=20, deadline=None)
@given(epochs=st.integers(1, 500), lr=st.floats(1e-6, 1.0), valid_frac=st.floats(0.01, 0.5),
       dropout=st.floats(0.0, 0.9), shift=st.integers(0, 16), name=st.text(max_size=20))
def test_any_valid_config_round_trips_through_json(epochs, lr, valid_frac, dropout, shift, name):
    config = ExperimentConfig().replace(train={"epochs": epochs, "lr": lr}, data={"valid_frac": valid_frac},
                                        model={"dropout": dropout}, augment={"shift": shift}, name=name)
    assert ExperimentConfig.from_dict(json.loads(config.to_json())) == config


def test_missing_keys_take_the_defaults():
    assert ExperimentConfig.from_dict({}) == ExperimentConfig()
    assert ExperimentConfig.from_dict({"train": {"epochs": 2}}) == ExperimentConfig().replace(train={"epochs": 2})


@pytest.mark.parametrize("raw,expected", [
    ({"trian": {}}, "unknown config key 'trian'; valid keys: data, augment, model, train, tracking, world_size, name"),
    ({"train": {"epoch": 3}}, "unknown key(s) in config section 'train': epoch; valid: "),
    ({"model": {"name": "pcamnet", "depth": 4, "act": "relu"}}, "section 'model': act, depth"),
    ({"data": "/data/pcam"}, "config section 'data' must be an object, got str"),
])
def test_unknown_keys_and_malformed_sections_are_refused_by_name(raw, expected):
    with pytest.raises(ValueError) as err:
        ExperimentConfig.from_dict(raw)
    assert expected in str(err.value)


@pytest.mark.parametrize("section,field,value,expected", [
    ("data", "format", "zarr", "data.format='zarr' is not valid; choose one of auto, h5, kaggle"),
    ("data", "cache", "maybe", "data.cache='maybe' is not valid"),
    ("data", "valid_frac", 0.0, "data.valid_frac=0.0 is out of range; expected a value in (0.0, 0.5]"),
    ("data", "valid_frac", 0.6, "data.valid_frac=0.6 is out of range"),
    ("data", "num_workers", -2, "data.num_workers=-2 must be -1 (auto) or >= 0"),
    ("data", "label_overrides", " ", "data.label_overrides must be the path of a review export"),
    ("augment", "stain", 1.5, "augment.stain=1.5 is out of range; expected a value in [0.0, 1.0]"),
    ("augment", "brightness", -0.1, "augment.brightness=-0.1 is out of range"),
    ("augment", "hue", 0.6, "augment.hue=0.6 is out of range"),
    ("augment", "shift", 17, "augment.shift=17 must be between 0 and 16 pixels"),
    ("model", "dropout", 0.95, "model.dropout=0.95 is out of range; expected a value in [0.0, 0.9]"),
    ("train", "epochs", 0, "train.epochs=0 must be at least 1"),
    ("train", "batch_size", 0, "train.batch_size=0 must be at least 1"),
    ("train", "lr", 0.0, "train.lr=0.0 is out of range; expected a value in (0.0, 1.0]"),
    ("train", "lr", 5.0, "train.lr=5.0 is out of range"),
    ("train", "weight_decay", 2.0, "train.weight_decay=2.0 is out of range"),
    ("train", "optimizer", "sgd", "train.optimizer='sgd' is not valid; choose one of adam, adamw"),
    ("train", "schedule", "step", "train.schedule='step' is not valid"),
    ("train", "device", "mps", "train.device='mps' is not valid"),
    ("train", "monitor", "auc", "train.monitor='auc' is not valid"),
    ("train", "warmup_frac", 0.8, "train.warmup_frac=0.8 is out of range"),
    ("train", "label_smoothing", 0.5, "train.label_smoothing=0.5 is out of range"),
    ("train", "ema_decay", 1.0, "train.ema_decay=1.0 is out of range"),
    ("train", "pos_weight", 0.0, "train.pos_weight=0.0 must be positive"),
    ("train", "max_steps", 0, "train.max_steps=0 must be at least 1"),
    ("train", "early_stopping", -1, "train.early_stopping=-1 must be >= 0"),
    ("train", "log_every", 0, "train.log_every=0 must be at least 1"),
    ("train", "keep", "first", "train.keep='first' is not valid; choose one of auto, best, last"),
    ("train", "distil", 0.0, "train.distil=0.0 is out of range; expected a value in (0.0, 1.0]"),
    ("train", "distil", 1.5, "train.distil=1.5 is out of range"),
    ("train", "teacher", " ", "train.teacher is empty: give a run folder or 'bundled'"),
    ("tracking", "mlflow_uri", " sqlite:///m.db", "tracking.mlflow_uri=' sqlite:///m.db' must be a URI"),
    ("tracking", "mlflow_experiment", " ", "tracking.mlflow_experiment must not be empty"),
])
def test_values_out_of_range_are_refused_by_name(section, field, value, expected):
    """The same check whether the value comes from a file (from_dict) or from code (replace)."""
    with pytest.raises(ValueError) as err:
        ExperimentConfig.from_dict({section: {field: value}})
    assert expected in str(err.value)
    with pytest.raises(ValueError, match=f"{section}.{field}"):
        ExperimentConfig().replace(**{section: {field: value}})


def test_the_range_limits_themselves_are_accepted():
    ExperimentConfig().replace(data={"valid_frac": 0.5, "num_workers": -1}, augment={"stain": 0.0, "hue": 0.5, "shift": 16},
                               model={"dropout": 0.9}, train={"lr": 1.0, "warmup_frac": 0.5, "ema_decay": 0.0,
                                                              "label_smoothing": 0.4, "early_stopping": 0, "distil": 1.0})


def test_world_size_is_checked_and_scales_the_global_batch():
    with pytest.raises(ValueError, match="world_size=0 must be at least 1"):
        ExperimentConfig.from_dict({"world_size": 0})
    assert ExperimentConfig().replace(train={"batch_size": 16}, world_size=4).global_batch_size == 64


def test_a_config_is_frozen():
    config = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3  # type: ignore[misc]
    assert config.replace(train={"epochs": 3}).train.epochs == 3 and config.train.epochs == TrainConfig().epochs


def test_a_config_file_that_is_missing_or_not_json_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found: .*nothing.json"):
        ExperimentConfig.from_json(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{epochs: 3")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        ExperimentConfig.from_json(tmp_path / "bad.json")


def test_folds_and_fold_are_checked() -> None:
    with pytest.raises(ValueError, match="data.folds=1"):
        DataConfig(folds=1)
    with pytest.raises(ValueError, match="data.fold=5"):
        DataConfig(folds=5, fold=5)
    with pytest.raises(ValueError, match="data.fold=1"):
        DataConfig(fold=1)  # no cross-validation: fold 0 only


def test_a_fold_keeps_its_last_epoch_and_early_stopping_is_refused_where_the_last_is_kept() -> None:
    """keep "auto": the last epoch for a fold of a cross-validation (its validation split is the fold it is reported on),
    the best otherwise; early stopping picks an epoch by the validation split, so it goes only with "best"."""
    fold = ExperimentConfig().replace(data={"folds": 5, "fold": 1})
    assert fold.keeps_last_epoch and not ExperimentConfig().keeps_last_epoch
    assert ExperimentConfig().replace(train={"keep": "last"}).keeps_last_epoch
    assert not fold.replace(train={"keep": "best", "early_stopping": 3}).keeps_last_epoch  # asked for: allowed
    for config, words in ((fold, "a fold of a cross-validation keeps its last epoch"), (ExperimentConfig().replace(
            train={"keep": "last"}), "train.keep='last' keeps the last epoch")):
        with pytest.raises(ValueError, match=f"train.early_stopping=3 cannot be used here: {words}"):
            config.replace(train={"early_stopping": 3})
    with pytest.raises(ValueError, match="early_stopping=2 cannot"):
        ExperimentConfig.from_dict({"data": {"folds": 3}, "train": {"early_stopping": 2}})


def test_a_written_config_from_before_train_keep_reads_as_the_best_epoch_it_kept() -> None:
    """A run's config.json is `to_dict()` written whole; one written before `train.keep` existed lacks only that key,
    and every run then kept its best epoch. A resumed old cross-validation must keep its remaining folds that way
    too, while a partial config a user writes (no derived `global_batch_size`) still takes the default."""
    written = ExperimentConfig().replace(data={"folds": 5, "fold": 2}).to_dict()
    assert ExperimentConfig.from_dict(written).keeps_last_epoch  # today's fold: its last epoch
    del written["train"]["keep"]
    old = ExperimentConfig.from_dict(written)
    assert old.train.keep == "best" and not old.keeps_last_epoch
    assert ExperimentConfig.from_dict(old.to_dict()) == old  # and it is written back with the field
    partial = {"data": {"folds": 5, "fold": 2}, "train": {"epochs": 3}}
    assert ExperimentConfig.from_dict(partial).train.keep == "auto"
    assert ExperimentConfig.from_dict(partial).keeps_last_epoch
