"""Recipes: a command's flags kept in a YAML file, so a build can be rerun exactly as it was made.

Read with PyYAML's safe loader (plain data, never Python objects) and checked by the command's own click
parameters, so a recipe takes exactly the values its flags take and is refused in the same words. Flags on
the command line win over the recipe, which wins over the defaults (click's ``default_map``). ``build``
stores the recipe it ran with in the bundle (``recipe.yaml``): ``build --recipe bundle/recipe.yaml``
builds the same bundle again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import click

from resnet_deploy.errors import ConfigError

RECIPE = "recipe.yaml"
VERSION = 1
# Where the bundle goes and how the command talks are the caller's, not the recipe's.
NOT_RECORDED = frozenset({"recipe", "out", "force", "as_json", "quiet", "resume"})


def recipe_option(f):
    """``--recipe FILE`` for a command: read first (eager), its values become the command's defaults."""
    return click.option("--recipe", type=click.Path(path_type=Path), default=None, is_eager=True,
                        expose_value=False, callback=_apply,
                        help="YAML file of this command's flags (e.g. a bundle's recipe.yaml); flags given "
                             "here win over it.")(f)


def _apply(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **read(value, ctx.command, ctx)}
    return value


def read(path: Path, command: click.Command, ctx: click.Context | None = None) -> dict[str, Any]:
    """The recipe at ``path`` as ``command``'s defaults, every value checked by its parameter."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"--recipe {path}: no such file. Give a YAML file of flags, e.g. a bundle's {RECIPE}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"--recipe {path} is not valid YAML: {' '.join(str(err).split())}. Fix the file "
                          f"(one `flag: value` per line, as in a bundle's {RECIPE}).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--recipe {path} must map flag names to values (`calib-samples: 300`), "
                          f"not hold a {type(data).__name__}.")
    data = dict(data)
    version = data.pop("recipe_version", VERSION)
    if version != VERSION:
        raise ConfigError(f"--recipe {path} is recipe_version {version!r}; this resnet-deploy reads "
                          f"recipe_version {VERSION}. Upgrade resnet-deploy or write the recipe again.")
    params = _params(command)
    by_flag = {_flag(p): p for p in params.values()}
    out: dict[str, Any] = {}
    for key, raw in data.items():
        param = by_flag.get(str(key).replace("_", "-")) or params.get(str(key).replace("-", "_"))
        if param is None or param.name is None:
            known = ", ".join(sorted(by_flag))
            raise ConfigError(f"--recipe {path}: `{key}` is not a flag of `resnet-deploy {command.name}`. "
                              f"Its flags: {known}.")
        value = _from_yaml(param, raw)
        if ctx is not None:  # the flag's own type and check, as if it had been typed
            try:
                param.process_value(ctx, value)
            except click.BadParameter as err:
                raise ConfigError(f"--recipe {path}: `{key}`: {err.format_message()}") from None
        out[param.name] = value
    return out


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params
            if isinstance(p, click.Option) and p.name and p.name not in NOT_RECORDED and p.expose_value}


def _flag(param: click.Parameter) -> str:
    """The name a person types: ``--target`` for the parameter ``targets``."""
    longs = [o for o in param.opts if o.startswith("--")]
    return (longs[0] if longs else f"--{param.name}")[2:]


def _from_yaml(param: click.Parameter, raw: Any) -> Any:
    """A YAML value in the form the flag takes on the command line (a list for a repeated flag, text else)."""
    if param.multiple:
        items = raw if isinstance(raw, list) else [raw]
        return tuple(_text(v) for v in items)
    if isinstance(param, click.Option) and param.is_flag:
        return raw
    if isinstance(raw, list):  # input-size [224, 224] or mean [0.485, 0.456, 0.406]
        sep = "x" if all(isinstance(v, int) and not isinstance(v, bool) for v in raw) else ","
        return sep.join(_text(v) for v in raw)
    return _text(raw)


def _text(value: Any) -> Any:
    return value if value is None or isinstance(value, bool) else str(value)


def effective(ctx: click.Context) -> dict[str, Any]:
    """The command's settings as a recipe: every recorded flag's value, paths made absolute so the recipe
    works from any folder; flags left at None are left out (they mean "decide from the model or data")."""
    recipe: dict[str, Any] = {"recipe_version": VERSION}
    for name, param in _params(ctx.command).items():
        value = ctx.params.get(name)
        if value is None or (param.multiple and not value):
            continue
        recipe[_flag(param)] = _to_yaml(value, names_a_file=_names_a_file(param))
    return recipe


def _names_a_file(param: click.Parameter) -> bool:
    """A path flag, or a data flag that takes a folder or a data set's name (``fashion-mnist``)."""
    return isinstance(param.type, click.Path) or bool(param.name and param.name.endswith(("data", "labels")))


def _to_yaml(value: Any, *, names_a_file: bool) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_yaml(v, names_a_file=names_a_file) for v in value]
    if names_a_file and isinstance(value, (str, Path)) and os.path.exists(value):
        return str(Path(value).resolve())
    if isinstance(value, Path):
        return str(value)
    return value


def dump(recipe: Mapping[str, Any]) -> str:
    import yaml

    return "# resnet-deploy recipe: `resnet-deploy build --recipe THIS_FILE` builds the bundle again.\n" + \
        yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=None)
