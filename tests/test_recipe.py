from pathlib import Path

import pytest

from tools.core.errors import UserError
from tools.core.recipe import available, engine_argv, load_recipe


@pytest.mark.parametrize("name", available())
def test_every_shipped_recipe_loads(name):
    recipe, path = load_recipe(name)
    assert recipe.name == path.stem
    argv = engine_argv(recipe, recipe.model.path, "127.0.0.1", recipe.serve.port)
    assert argv[:2] == ["--model", recipe.model.path]
    assert recipe.serve.served_model_name in argv


def test_engine_args_are_an_argument_list_not_shell():
    recipe, _ = load_recipe("robobrain2-32b-ascend")
    argv = engine_argv(recipe, "/m", "127.0.0.1", 9010)
    assert "--no-enable-prefix-caching" in argv
    i = argv.index("--tensor-parallel-size")
    assert argv[i + 1] == "8"


def _write(tmp_path: Path, text: str, name: str = "bad") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_key_named_with_file(tmp_path):
    good = (Path(__file__).parent.parent / "recipes" / "tiny-cpu.yaml").read_text()
    path = _write(tmp_path, good.replace("\nname: tiny-cpu", "\nname: bad\nflavor: x", 1))
    with pytest.raises(UserError) as info:
        load_recipe(path)
    text = info.value.render()
    assert "flavor: unknown key" in text and path in text


@pytest.mark.parametrize(("engine_args", "message"), [
    ("max_model_len: 256\n    port: 1", "serve.engine_args"),  # a reserved engine arg
    ("max_model_len: {a: 1}", "max_model_len takes no mapping"),  # a mapping for an option that takes none
])
def test_bad_engine_args_are_refused(tmp_path, engine_args, message):
    good = (Path(__file__).parent.parent / "recipes" / "tiny-cpu.yaml").read_text()
    path = _write(tmp_path, good.replace("\nname: tiny-cpu", "\nname: bad", 1).replace(
        "max_model_len: 256", engine_args))
    with pytest.raises(UserError, match=message):
        load_recipe(path)


def test_bad_yaml_has_line(tmp_path):
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert f"{path}:" in info.value.render()


def test_unknown_recipe_lists_available():
    with pytest.raises(UserError) as info:
        load_recipe("no-such-recipe")
    assert "tiny-cpu" in info.value.render()


# ---- multimodal limits: what vLLM 0.32.0's CLI and FlagScale 0.8.0 both take ------------------------------

def _vl(tmp_path: Path, limit: str, images: int = 1) -> str:
    good = (Path(__file__).parent.parent / "recipes" / "tiny-vl-cpu.yaml").read_text()
    text = good.replace("\nname: tiny-vl-cpu", "\nname: bad", 1).replace(
        "limit_mm_per_prompt: {image: 2, video: 0}", f"limit_mm_per_prompt: {limit}").replace(
        "images: 1", f"images: {images}")
    return _write(tmp_path, text)


def test_a_limit_mapping_reaches_vllm_as_one_json_argument():
    recipe, _ = load_recipe("qwen2.5-vl-32b-instruct-nvidia")
    argv = engine_argv(recipe, "/m", "127.0.0.1", 9010)
    i = argv.index("--limit-mm-per-prompt")
    assert argv[i + 1] == '{"image":18}'
    assert recipe.serve.image_limit() == 18


def test_flagscales_image_equals_form_is_refused_with_the_fix(tmp_path):
    # `vllm serve --limit-mm-per-prompt image=18` exits: "Value image=18 cannot be converted to <json.loads>"
    with pytest.raises(UserError) as info:
        load_recipe(_vl(tmp_path, "image=18"))
    text = info.value.render()
    assert "parses --limit-mm-per-prompt as JSON" in text and "limit_mm_per_prompt: {image: 18}" in text


def test_json_text_and_the_configurable_form_are_accepted(tmp_path):
    recipe, _ = load_recipe(_vl(tmp_path, "'{\"image\": 3}'"))
    assert recipe.serve.image_limit() == 3
    recipe, _ = load_recipe(_vl(tmp_path, "{image: {count: 4, width: 64, height: 64}}"))
    assert recipe.serve.image_limit() == 4
    assert '{"image":{"count":4,"width":64,"height":64}}' in engine_argv(recipe, "/m", "127.0.0.1", 1)


def test_more_smoke_images_than_the_limit_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"tests.smoke.images is 3, more than .* allows \(2\)"):
        load_recipe(_vl(tmp_path, "{image: 2}", images=3))
