"""The run config: YAML recipes, dotted overrides with type coercion, unknown keys, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cotdistill.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    SyntheticDataConfig,
    TinyModelConfig,
    TrainConfig,
    describe_config,
    load_config,
    parse_overrides,
    to_yaml,
)
from cotdistill.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
BASE = ["model.name_or_path=some/model"]


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def leaf_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(leaf_keys(type(value), f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def with_overrides(*items: str) -> RunConfig:
    return load_config(None, [*BASE, *items])


# ---------------------------------------------------------------------------------------------------------
# Recipes


def test_recipe_values_reach_nested_sections(tmp_path):
    recipe = write(tmp_path, """
output_dir: runs/here
model:
  name_or_path: runs/tiny
  make_tiny: gpt2
  tiny: {vocab_size: 200, d_model: 64}
data:
  synthetic: {train_size: 50, operations: [add, mul]}
  formats: {answer_only: 1.0}
train: {max_steps: 7, lr: 3.0e-3, group_by_length: false}
""")
    config = load_config(recipe)
    assert config.output_dir == "runs/here"
    assert config.model.make_tiny == "gpt2"
    assert config.model.tiny.vocab_size == 200
    assert config.model.tiny.d_model == 64
    assert config.model.tiny.num_layers == TinyModelConfig().num_layers
    assert config.data.synthetic.train_size == 50
    assert config.data.synthetic.operations == ["add", "mul"]
    assert config.data.formats == {"answer_only": 1.0}
    assert config.train.max_steps == 7
    assert config.train.lr == pytest.approx(3e-3)
    assert config.train.group_by_length is False


def test_keys_absent_from_recipe_keep_their_defaults(tmp_path):
    recipe = write(tmp_path, "model: {name_or_path: m}\n")
    config = load_config(recipe)
    assert config.train == TrainConfig()
    assert config.checkpoint == CheckpointConfig()
    assert config.model.tiny == TinyModelConfig()


def test_overrides_apply_on_top_of_recipe(tmp_path):
    recipe = write(tmp_path, "model: {name_or_path: m}\ntrain: {max_steps: 300, lr: 1.0e-3}\n")
    config = load_config(recipe, ["train.max_steps=20"])
    assert config.train.max_steps == 20
    assert config.train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_loads_and_validates(recipe):
    config = load_config(recipe)
    assert config.model.name_or_path
    assert config.model.make_tiny in ("t5", "gpt2")
    assert (REPO / config.deepspeed_config).is_file()
    assert config.train.max_steps > 0


def test_both_demo_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"demo-gpt2-synthetic.yaml", "demo-t5-synthetic.yaml"} <= names


def test_missing_recipe_error_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)


def test_invalid_yaml_error_names_the_file(tmp_path):
    recipe = write(tmp_path, "train: {max_steps: [1, 2\n", name="broken.yaml")
    with pytest.raises(ConfigError, match="broken.yaml") as info:
        load_config(recipe)
    assert "YAML" in str(info.value)


def test_top_level_list_error_names_the_file(tmp_path):
    recipe = write(tmp_path, "- train\n- model\n", name="listy.yaml")
    with pytest.raises(ConfigError, match="listy.yaml") as info:
        load_config(recipe)
    assert "mapping" in str(info.value)


def test_unknown_top_level_recipe_key_lists_valid_keys(tmp_path):
    recipe = write(tmp_path, "model: {name_or_path: m}\ntrian: {max_steps: 3}\n", name="typo.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert "typo.yaml" in message
    assert "trian" in message
    for name in field_names(RunConfig):
        assert name in message


def test_unknown_nested_recipe_key_lists_valid_keys_of_its_section(tmp_path):
    recipe = write(tmp_path, "model: {name_or_path: m}\ntrain: {max_stepz: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert "train.max_stepz" in message
    for name in field_names(TrainConfig):
        assert name in message


def test_recipe_section_given_a_scalar_is_refused(tmp_path):
    recipe = write(tmp_path, "model: {name_or_path: m}\ntrain: 3\n")
    with pytest.raises(ConfigError, match="train"):
        load_config(recipe)


def test_recipe_wrong_type_names_the_key(tmp_path):
    recipe = write(tmp_path, "model: {name_or_path: m}\ntrain: {micro_batch_size: lots}\n")
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size"):
        load_config(recipe)


# ---------------------------------------------------------------------------------------------------------
# Overrides and coercion


def test_override_coerces_int():
    config = with_overrides("train.max_steps=20", "model.tiny.d_model=64")
    assert config.train.max_steps == 20
    assert isinstance(config.train.max_steps, int)
    assert config.model.tiny.d_model == 64


def test_override_integral_float_becomes_int():
    config = with_overrides("train.max_steps=20.0")
    assert config.train.max_steps == 20
    assert isinstance(config.train.max_steps, int)


def test_override_fractional_value_for_int_key_is_refused():
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        with_overrides("train.max_steps=2.5")


@pytest.mark.parametrize("raw, expected", [("3e-4", 3e-4), ("3.0e-4", 3e-4), ("0.001", 1e-3), ("2", 2.0)])
def test_override_coerces_float_including_exponent_without_dot(raw, expected):
    config = with_overrides(f"train.lr={raw}")
    assert isinstance(config.train.lr, float)
    assert config.train.lr == pytest.approx(expected)


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("false", False), ("True", True), ("FALSE", False),
    ("yes", True), ("no", False), ("on", True), ("off", False), ("1", True), ("0", False),
])
def test_override_coerces_bool_strings(raw, expected):
    config = with_overrides(f"train.group_by_length={raw}")
    assert config.train.group_by_length is expected


def test_override_bool_rejects_other_words():
    with pytest.raises(ConfigError, match=r"checkpoint\.resume"):
        with_overrides("checkpoint.resume=maybe")


@pytest.mark.parametrize("raw", ["add,mul", "add, mul", "[add, mul]", "[add,mul]"])
def test_override_coerces_list_forms(raw):
    config = with_overrides(f"data.synthetic.operations={raw}")
    assert config.data.synthetic.operations == ["add", "mul"]


def test_override_single_item_list():
    config = with_overrides("data.synthetic.operations=mul")
    assert config.data.synthetic.operations == ["mul"]


def test_override_coerces_flow_mapping_to_dict_of_floats():
    config = with_overrides("data.formats={zero_shot_cot: 0.5, answer_only: 0.5}")
    assert config.data.formats == {"zero_shot_cot": 0.5, "answer_only": 0.5}
    assert all(isinstance(v, float) for v in config.data.formats.values())


def test_override_dict_replaces_whole_mixture():
    config = with_overrides("data.formats={answer_only: 1}")
    assert config.data.formats == {"answer_only": 1.0}


def test_override_non_mapping_for_dict_key_is_refused():
    with pytest.raises(ConfigError, match=r"data\.formats"):
        with_overrides("data.formats=zero_shot_cot")


def test_override_value_may_contain_equals_sign():
    config = with_overrides("output_dir=runs/a=b")
    assert config.output_dir == "runs/a=b"


def test_later_override_wins():
    config = with_overrides("train.max_steps=5", "train.max_steps=9")
    assert config.train.max_steps == 9


def test_overrides_do_not_leak_into_fresh_defaults():
    with_overrides("data.synthetic.operations=mul", "data.formats={answer_only: 1}")
    assert SyntheticDataConfig().operations == ["add", "sub"]
    assert DataConfig().formats == {"zero_shot_cot": 1.0}


def test_unknown_top_level_override_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        with_overrides("outptu_dir=x")
    message = str(info.value)
    assert "outptu_dir" in message
    for name in field_names(RunConfig):
        assert name in message


def test_unknown_section_in_dotted_override_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        with_overrides("trian.max_steps=3")
    message = str(info.value)
    assert "trian" in message
    for name in field_names(RunConfig):
        assert name in message


@pytest.mark.parametrize("dotted, cls", [
    ("train.max_stepz", TrainConfig),
    ("model.tiny.d_modle", TinyModelConfig),
    ("data.synthetic.opertions", SyntheticDataConfig),
    ("eval.batchsize", EvalConfig),
    ("model.nmae_or_path", ModelConfig),
])
def test_unknown_nested_override_lists_valid_keys_of_its_section(dotted, cls):
    with pytest.raises(ConfigError) as info:
        with_overrides(f"{dotted}=3")
    message = str(info.value)
    assert dotted in message
    for name in field_names(cls):
        assert name in message


@pytest.mark.parametrize("item", ["train.max_steps", "train.max_steps:20", "=3", " =3"])
def test_override_without_key_value_form_is_refused(item):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([item])


def test_load_config_refuses_override_without_equals():
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(None, [*BASE, "train.max_steps"])


def test_parse_overrides_splits_on_first_equals_and_strips_key():
    assert parse_overrides([" train.lr =3e-4", "a=b=c"]) == [("train.lr", "3e-4"), ("a", "b=c")]


@pytest.mark.parametrize("item", ["train=3", "model.tiny=5", "data.synthetic={min_steps: 2}"])
def test_setting_a_whole_section_is_refused(item):
    section = item.partition("=")[0]
    with pytest.raises(ConfigError, match="section") as info:
        with_overrides(item)
    assert section in str(info.value)


def test_wrong_type_override_names_the_key_and_value():
    with pytest.raises(ConfigError) as info:
        with_overrides("train.max_steps=abc")
    message = str(info.value)
    assert "train.max_steps" in message
    assert "abc" in message


def test_wrong_type_float_override_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        with_overrides("train.lr=fast")


def test_bool_for_number_key_is_refused():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        with_overrides("train.lr=true")


@pytest.mark.parametrize("raw", ["007", "on", "0x10", "[a, b]"])
def test_string_override_is_taken_verbatim(raw):
    assert with_overrides(f"output_dir={raw}").output_dir == raw


def test_value_key_used_as_section_says_it_is_a_single_value():
    with pytest.raises(ConfigError, match="single value"):
        with_overrides("output_dir.x=1")


# ---------------------------------------------------------------------------------------------------------
# Validation


def test_default_config_without_model_is_refused():
    with pytest.raises(ConfigError, match=r"model\.name_or_path"):
        load_config(None)


def test_empty_model_name_from_recipe_is_refused(tmp_path):
    recipe = write(tmp_path, "model: {name_or_path: ''}\n")
    with pytest.raises(ConfigError, match=r"model\.name_or_path"):
        load_config(recipe)


def test_empty_model_name_override_is_refused():
    with pytest.raises(ConfigError, match=r"model\.name_or_path"):
        with_overrides("model.name_or_path=")


@pytest.mark.parametrize("item, key", [
    ("train.precision=fp8", "train.precision"),
    ("train.schedule=exponential", "train.schedule"),
    ("model.kind=encoder", "model.kind"),
    ("model.make_tiny=mamba", "model.make_tiny"),
])
def test_invalid_choice_is_refused_naming_key_and_choices(item, key):
    with pytest.raises(ConfigError) as info:
        with_overrides(item)
    message = str(info.value)
    assert key in message
    assert item.partition("=")[2] in message


def test_bad_precision_error_lists_valid_precisions():
    with pytest.raises(ConfigError) as info:
        with_overrides("train.precision=fp8")
    for name in ("bf16", "fp16", "fp32"):
        assert name in str(info.value)


def test_bad_schedule_error_lists_valid_schedules():
    with pytest.raises(ConfigError) as info:
        with_overrides("train.schedule=step")
    for name in ("cosine", "linear", "constant"):
        assert name in str(info.value)


@pytest.mark.parametrize("ratio", ["1.5", "-0.1"])
def test_min_lr_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"train\.min_lr_ratio"):
        with_overrides(f"train.min_lr_ratio={ratio}")


@pytest.mark.parametrize("ratio", ["0", "1", "0.05"])
def test_min_lr_ratio_on_unit_interval_is_accepted(ratio):
    assert with_overrides(f"train.min_lr_ratio={ratio}").train.min_lr_ratio == pytest.approx(float(ratio))


@pytest.mark.parametrize("ops", ["add,div", "[mod]", "[]"])
def test_operations_must_be_nonempty_subset(ops):
    with pytest.raises(ConfigError, match=r"data\.synthetic\.operations"):
        with_overrides(f"data.synthetic.operations={ops}")


def test_all_three_operations_are_accepted():
    config = with_overrides("data.synthetic.operations=add,sub,mul")
    assert config.data.synthetic.operations == ["add", "sub", "mul"]


def test_min_steps_above_max_steps_is_refused():
    with pytest.raises(ConfigError, match="min_steps"):
        with_overrides("data.synthetic.min_steps=4", "data.synthetic.max_steps=3")


def test_zero_min_steps_is_refused():
    with pytest.raises(ConfigError, match="min_steps"):
        with_overrides("data.synthetic.min_steps=0")


def test_operand_range_reversed_is_refused():
    with pytest.raises(ConfigError, match="operand_min"):
        with_overrides("data.synthetic.operand_min=30", "data.synthetic.operand_max=20")


@pytest.mark.parametrize("item, key", [
    ("train.micro_batch_size=0", "train.micro_batch_size"),
    ("train.gradient_accumulation=0", "train.gradient_accumulation"),
    ("train.lr=0", "train.lr"),
    ("train.max_steps=-1", "train.max_steps"),
    ("train.warmup_steps=-5", "train.warmup_steps"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last"),
    ("data.max_source_tokens=0", "data.max_source_tokens"),
    ("eval.batch_size=0", "eval.batch_size"),
])
def test_non_positive_sizes_are_refused_naming_the_key(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        with_overrides(item)


def test_epochs_must_be_positive_when_max_steps_is_zero():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        with_overrides("train.max_steps=0", "train.epochs=0")


def test_epochs_are_ignored_when_max_steps_is_set():
    assert with_overrides("train.max_steps=10", "train.epochs=0").train.max_steps == 10


# ---------------------------------------------------------------------------------------------------------
# Describing and round-tripping


def test_describe_config_lists_every_leaf_key_once():
    lines = describe_config()
    described = [line.split(" = ", 1)[0] for line in lines]
    expected = leaf_keys()
    assert sorted(described) == sorted(expected)
    assert len(described) == len(set(described))
    assert "model.tiny.vocab_size" in described
    assert "data.synthetic.operations" in described
    assert "train" not in described


def test_describe_config_shows_default_and_help():
    lines = {line.split(" = ", 1)[0]: line for line in describe_config()}
    assert "'cosine'" in lines["train.schedule"]
    assert "# " in lines["train.schedule"]
    assert lines["train.schedule"].split("# ", 1)[1].strip()


def test_to_yaml_round_trips_defaults_with_model(tmp_path):
    config = with_overrides()
    recipe = write(tmp_path, to_yaml(config))
    assert load_config(recipe) == config


def test_to_yaml_round_trips_changed_values(tmp_path):
    config = with_overrides(
        "train.lr=3e-4", "train.group_by_length=false", "data.synthetic.operations=[mul, add]",
        "data.formats={zero_shot_cot: 0.25, answer_only: 0.75}", "model.tiny.d_model=48",
        "output_dir=runs/round trip", "eval.strategy=answer_only",
    )
    recipe = write(tmp_path, to_yaml(config))
    again = load_config(recipe)
    assert again == config
    assert again.data.synthetic.operations == ["mul", "add"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_round_trips_through_yaml(recipe, tmp_path):
    config = load_config(recipe)
    assert load_config(write(tmp_path, to_yaml(config))) == config


PAPER_RECIPES = sorted((REPO / "recipes" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: p.name)
def test_paper_recipes_load_validate_and_name_their_mixtures(recipe):
    from cotdistill.formats import validate_mixture

    config = load_config(recipe)
    assert not config.model.make_tiny and config.data.dataset == "teacher_data"
    assert validate_mixture(config.data.formats)
    assert (REPO / config.deepspeed_config).is_file()


@pytest.mark.parametrize("text, expected", [("", None), ("7", (7, 7)), ("5-8", (5, 8)), (" 2 - 3 ", (2, 3))])
def test_profile_steps_name_a_step_or_a_range(text, expected):
    from cotdistill.profiling import parse_step_range

    assert parse_step_range(text) == expected


@pytest.mark.parametrize("text", ["0", "8-5", "five", "1-2-3"])
def test_a_bad_profile_range_is_a_config_error_naming_the_key(text):
    with pytest.raises(ConfigError, match="train.profile_steps"):
        load_config(REPO / "recipes" / "demo-t5-synthetic.yaml", [f"train.profile_steps={text}"])
