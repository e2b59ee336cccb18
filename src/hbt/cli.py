"""The command line's own mistakes as one line, before Hydra starts.

A misspelt key, a group option that does not exist or an override Hydra cannot parse would otherwise
print Hydra's several-line report (and, for a renamed key, no hint of the new name). ``preflight`` composes
the config from the command line's overrides first (for a multirun, with each swept key at its first
value) and turns a composition error into ``config error: <key>: <problem>`` and exit code 1; a command
line that composes is left to Hydra untouched. Help, ``--cfg`` and other Hydra flags skip the check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hbt.errors import first_line

MAX_TRIALS = 64  # compositions checked for one multirun (each swept value once)
# Keys an earlier hbt had, and where their setting lives now.
RENAMED = {
    "loss.chunk_size": "grad_cache.chunk_size",
    "paths.shared_data_dir": "paths.data_dir",
}


def preflight(config_dir: str | Path, config_name: str, argv: list[str] | None = None) -> None:
    from hbt.compat import hydra_args_parser

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = hydra_args_parser().parse_args(argv)
    except SystemExit:
        return  # Hydra's own parser will say what is wrong with the flags
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.config_path or args.config_dir:
        return
    message = composition_error(Path(config_dir), args.config_name or config_name, args.overrides, args.multirun)
    if message is not None:
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(1)


def composition_error(config_dir: Path, config_name: str, overrides: list[str], multirun: bool) -> str | None:
    """``config error: ...`` for overrides the config cannot take, else None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        return f"config error: {_override_of(str(err), overrides)}: cannot parse it ({first_line(err)}); see `python {Path(sys.argv[0]).name} --hydra-help`"
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if key in RENAMED and override.get_key_element()[0] not in "+~":
            return f"config error: {key}: renamed to {RENAMED[key]} (use {RENAMED[key]}={override.input_line.split('=', 1)[1]})"
        if override.is_sweep_override() and not multirun:
            return (
                f"config error: {override.get_key_element()}: several values ({override.input_line.split('=', 1)[1]}) "
                "sweep only with -m; for a list write key=[a,b]"
            )
    # Each swept value once (the other keys at their first value): a sweep's bad option is found before
    # the jobs before it have run. A search space a sweeper samples (``interval``, ``tag(log, ...)``,
    # also given as ``hydra.sweeper.params.<key>=...`` or in the config's ``hydra.sweeper.params``) is
    # checked at its two ends.
    values = [_trial_values(o) for o in parsed]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir.resolve())):
            for overrides_once in _trials(values)[:MAX_TRIALS]:
                cfg = compose(config_name, overrides=overrides_once, return_hydra_config=True)
                sampled = [o for o in parsed if _is_sampled(o)]
                if sampled and str(cfg.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
                    key, space = sampled[0].get_key_element(), sampled[0].input_line.split("=", 1)[1]
                    return (
                        f"config error: {key}: {space} is a search space that a sampling sweeper draws from "
                        "(add hydra/sweeper=optuna; pip install -e '.[sweep]'); Hydra's basic sweeper takes lists: a,b,c or range(...)"
                    )
                searched = _sweeper_params(cfg, parsed) if multirun else []
                if searched:
                    for more in _trials([*values, *map(_trial_values, searched)])[:MAX_TRIALS]:
                        compose(config_name, overrides=more, return_hydra_config=True)
                    break
    except (HydraException, OmegaConfBaseException) as err:
        return f"config error: {_describe(err)}"
    finally:
        GlobalHydra.instance().clear()
    return None


SWEEPER_PARAMS = "hydra.sweeper.params."


def _trial_values(override) -> list[str]:
    """The overrides to compose for one command-line override: each value of a grid sweep; both ends of a
    sampled one; a sweeper's own parameter checked as the key it searches (its ``hydra.sweeper.params``
    entry itself is the sweeper's to read, so it is left out of the composition)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    key = override.get_key_element()
    if key.lstrip("+~").startswith(SWEEPER_PARAMS):
        searched = f"{key.lstrip('+~')[len(SWEEPER_PARAMS) :]}={override.input_line.split('=', 1)[1]}"
        return _trial_values(OverridesParser.create().parse_overrides([searched])[0])
    if not override.is_sweep_override():
        return [override.input_line]
    try:
        return [f"{key}={_as_override_value(v)}" for v in override.sweep_iterator()]
    except HydraException:  # interval(...), possibly tagged: sampled by the sweeper, not enumerable
        space = override.value()
        return [f"{key}={_as_override_value(v)}" for v in (space.start, space.end)]


def _is_sampled(override) -> bool:
    from hydra.core.override_parser.types import IntervalSweep

    return override.is_sweep_override() and isinstance(override.value(), IntervalSweep)


def _trials(values: list[list[str]]) -> list[list[str]]:
    firsts = [options[0] for options in values if options]
    return [firsts] + [[*firsts[:i], option, *firsts[i + 1 :]] for i, options in enumerate(values) for option in options[1:]]


def _sweeper_params(cfg, parsed) -> list:
    """The search space a sweeper plugin reads from the config (``hydra.sweeper.params``, Optuna's and
    Nevergrad's way), as overrides, less the keys the command line already sweeps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if not params:
        return []
    given = {o.get_key_element().lstrip("+~").removeprefix(SWEEPER_PARAMS) for o in parsed}
    lines = [f"{key}={value}" for key, value in OmegaConf.to_container(params).items() if key not in given]
    return OverridesParser.create().parse_overrides(lines)


def _describe(err: BaseException) -> str:
    text = str(err)
    missing = re.search(r"Could not override '([^']+)'", text)
    if missing:
        key = missing.group(1)
        return f"{key}: no such key (a new key is added with +{key}=...)"
    option = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if option:
        group, name = option.groups()
        available = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
        shown = ", ".join(a for a in available if not a.startswith("_"))
        hint = "; a sweeper plugin: pip install -e '.[sweep]' for optuna" if group == "hydra/sweeper" else ""
        return f"{group}: no option '{name}'" + (f" (available: {shown})" if shown else "") + hint
    cause = err.__cause__
    return first_line(err) + (f" ({first_line(cause)})" if cause is not None else "")


def _override_of(text: str, overrides: list[str]) -> str:
    quoted = re.search(r"override '([^']+)'", text)
    if quoted:
        return quoted.group(1)
    return overrides[-1] if overrides else "overrides"


def _as_override_value(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


# Keys hbt reads itself before instantiating the node (hbt.eval.subsets: a benchmark's query subsets).
CONSUMED = {"query_ids"}


def bound_nodes(node, path: str = "") -> list[tuple[str, dict]]:
    """Every node with a ``_target_`` in a plain config, with its dotted path."""
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append((path, node))
        for key, value in node.items():
            found += bound_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += bound_nodes(value, f"{path}[{i}]")
    return found


def check_targets(cfg) -> None:
    """Every key beside a ``_target_`` is a parameter of what it names: a key no constructor takes (a
    misspelling added with ``+``, a setting of another class) is one line naming it, before anything is
    built, instead of a TypeError from deep inside instantiation, or nothing at all."""
    import inspect

    from hydra.utils import get_object
    from omegaconf import OmegaConf

    from hbt.errors import ConfigError

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    for path, node in bound_nodes(plain):
        try:
            target = get_object(node["_target_"])
        except Exception as err:  # noqa: BLE001 - any import failure is the same mistake for the user
            raise ConfigError(f"{path}._target_" if path else "_target_", f"cannot import {node['_target_']} ({err})") from None
        parameters = inspect.signature(target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        unknown = sorted(k for k in node if not (k.startswith("_") and k.endswith("_")) and k not in CONSUMED and k not in parameters)
        if unknown:
            takes = ", ".join(name for name in parameters if name != "self")
            where = f"{path}.{unknown[0]}" if path else unknown[0]
            raise ConfigError(where, f"not a parameter of {node['_target_']} (it takes: {takes})")
