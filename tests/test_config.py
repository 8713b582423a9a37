import pytest

from slim.distill.config import ConfigError, load_config


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def configs(tmp_path):
    base = tmp_path / "_base_"
    base.mkdir()
    _write(base / "data.yml", """
batch_size: 4
iters: 1000
train_dataset: {type: Dataset, dataset_root: data/nuclei, num_classes: 2}
optimizer: {type: SGD, momentum: 0.9, weight_decay: 4.0e-5}
""")
    return tmp_path, _write(tmp_path / "student.yml", """
_base_: _base_/data.yml
iters: 200
optimizer: {momentum: 0.8}
model: {type: DeepLabV3P, backbone: {type: ResNet18_vd, output_stride: 8}, num_classes: 2}
""")


def test_base_inheritance_merges_nested_keys(configs):
    _, path = configs
    cfg = load_config(path)
    assert cfg.iters == 200 and cfg.batch_size == 4
    assert cfg.optimizer.to_dict() == {"type": "SGD", "momentum": 0.8, "weight_decay": 4.0e-5}
    assert cfg["train_dataset"]["dataset_root"] == "data/nuclei"


def test_inherited_false_replaces_the_base_section(configs):
    tmp, _ = configs
    path = _write(tmp / "s2.yml", "_base_: _base_/data.yml\noptimizer: {_inherited_: false, type: Adam}\n")
    assert load_config(path).optimizer.to_dict() == {"type": "Adam"}


def test_priority_command_line_over_yaml_over_defaults(configs):
    _, path = configs
    cfg = load_config(path, opts=["iters=50", "model.backbone.output_stride=16",
                                  "train_dataset.transforms=[{type: Normalize}]", "seed=null"],
                      defaults={"iters": 7, "batch_size": 1, "epochs": 3})
    assert cfg.iters == 50  # command line beats yaml
    assert cfg.batch_size == 4  # yaml beats defaults
    assert cfg.epochs == 3  # defaults fill what nothing else sets
    assert cfg.model.backbone.output_stride == 16
    assert cfg.train_dataset.transforms[0].type == "Normalize"
    assert cfg.seed is None


def test_override_into_a_list_by_index(configs):
    tmp, _ = configs
    path = _write(tmp / "l.yml", "loss: {types: [{type: CrossEntropyLoss}], coef: [1]}\n")
    cfg = load_config(path, opts=["loss.coef.0=0.5", "loss.types.0.type=DiceLoss"])
    assert cfg.loss.coef[0] == 0.5 and cfg.loss.types[0].type == "DiceLoss"
    with pytest.raises(ConfigError, match="not a valid index"):
        load_config(path, opts=["loss.coef.3=1"])


def test_malformed_override_is_a_clear_error(configs):
    _, path = configs
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, opts=["iters"])


def test_unknown_top_level_key_suggests_the_nearest(configs):
    tmp, _ = configs
    path = _write(tmp / "typo.yml", "_base_: _base_/data.yml\nbatchsize: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "'batchsize'" in str(err.value) and "did you mean 'batch_size'" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'lr_scheduler'"):
        load_config(path.replace("typo", "typo"), opts=["lr_schedular.type=PolynomialDecay"])


def test_config_is_frozen(configs):
    _, path = configs
    cfg = load_config(path)
    with pytest.raises(TypeError, match="frozen"):
        cfg.iters = 3
    with pytest.raises(TypeError):
        cfg.model.num_classes = 3
    copy = cfg.to_dict()
    copy["iters"] = 3
    assert cfg.iters == 200


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yml"))
    bad = _write(tmp_path / "bad.yml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config(bad)
