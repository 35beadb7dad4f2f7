import pytest

from training.config import ConfigError, ModelConfig, PreprocessConfig, TrainConfig


@pytest.mark.parametrize("cls", [PreprocessConfig, ModelConfig, TrainConfig])
def test_round_trip_through_json(cls):
    cfg = cls()
    assert cls.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("cls, data", [
    (ModelConfig, {"filters": "8"}),
    (ModelConfig, {"latent_dim": 2.5}),
    (ModelConfig, {"spatial_dims": True}),
    (PreprocessConfig, {"rois": "GTV"}),
    (PreprocessConfig, {"rois": [1, 2]}),
    (TrainConfig, {"epochs": 2.5}),
    (TrainConfig, {"channels_last": 1}),
    (TrainConfig, {"nonsense": 1}),
])
def test_wrong_types_and_unknown_settings_are_refused_by_name(cls, data):
    with pytest.raises(ConfigError) as err:
        cls.from_dict(data)
    assert next(iter(data)) in str(err.value)


def test_ints_become_floats_and_lists_tuples():
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0 and isinstance(TrainConfig.from_dict({"lr": 1}).lr, float)
    assert PreprocessConfig.from_dict({"rois": ["A", "B"]}).rois == ("A", "B")
    assert PreprocessConfig.from_dict({"crop": None}).crop is None


def test_presets_and_validation():
    assert PreprocessConfig.preset("lung").hu_min == -1350.0
    with pytest.raises(ConfigError):
        PreprocessConfig.preset("nope")
    with pytest.raises(ConfigError):
        PreprocessConfig(hu_min=10, hu_max=0).validate()
