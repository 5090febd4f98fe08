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


def test_reserved_engine_arg(tmp_path):
    good = (Path(__file__).parent.parent / "recipes" / "tiny-cpu.yaml").read_text()
    path = _write(tmp_path, good.replace("\nname: tiny-cpu", "\nname: bad", 1).replace(
        "max_model_len: 256", "max_model_len: 256\n    port: 1"))
    with pytest.raises(UserError, match="serve.engine_args"):
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
