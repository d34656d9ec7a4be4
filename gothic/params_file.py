"""Reading params.yaml: the YAML parse DVC uses, bounds on what a file may hold, `--set` overrides.

`load_params` is the one reader of a params file: stages, CLIs and benchmarks call it (or its
parts, `read_params_dict` and `set_values`), and `gothic.config.params_from_dict` types and checks
what it read:

    params = load_params("params.yaml", ["train.max_iters=200"])
    params.train.learning_rate
"""

from __future__ import annotations

from pathlib import Path

from gothic.config import SECTIONS, ConfigError, Params, params_from_dict
from gothic.errors import first_line


def parse_yaml(text: str):
    """YAML the way DVC reads params.yaml (ruamel.yaml, YAML 1.2, safe): `3e-4` is a float and `no`
    a string for gothic exactly as for `dvc exp run -S`, `dvc params diff` and dvc.lock.
    Raises ruamel's YAMLError (imported here: ruamel takes longer to import than a --help takes)."""
    from ruamel.yaml import YAML, YAMLError

    try:
        # dvc.utils.serialize.parse_yaml's call, in pure Python: where ruamel.yaml.clib is installed DVC parses
        # with libyaml (same values, the same YAML 1.2 resolver), which crashes the process on nesting
        # thousands deep, where the pure parser raises RecursionError and gothic can say what is wrong
        return YAML(typ="safe", pure=True).load(text)
    except RecursionError:  # `[[[[...` thousands deep: ruamel parses nesting by recursion
        raise YAMLError("nested thousands of levels deep (a params file is a few levels deep)") from None


MAX_PARAMS_BYTES = 1 << 20
"""A params file is a few kilobytes: reading at most this much bounds a file that never ends (/dev/zero)."""
MAX_PARAMS_NODES = 100_000
"""Values in a params file with its YAML aliases expanded: a few hundred in practice, so a billion-laughs
file (aliases of aliases) is refused before anything walks it."""


def _expanded_nodes(value, budget: int) -> int:
    """How many values `value` holds with shared (aliased) parts counted each time, counting stops past budget."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _read_bounded(path: Path) -> str:
    with path.open("rb") as f:
        data = f.read(MAX_PARAMS_BYTES + 1)
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError([f"larger than {MAX_PARAMS_BYTES >> 20} MiB, so not a params file (a params.yaml is a few "
                           "kilobytes)"], str(path))
    return data.decode("utf-8")


def read_params_dict(path: str | Path = "params.yaml") -> dict:
    """Parse a params file into a plain dict; a missing, empty, malformed or oversized file is a ConfigError."""
    path = Path(path)
    try:
        text = _read_bounded(path)
    except FileNotFoundError:
        raise ConfigError(["file not found (run from the project root, or pass --params PATH)"], str(path)) from None
    except IsADirectoryError:
        raise ConfigError(["is a folder, not a params file"], str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read: {getattr(e, 'strerror', None) or e}"], str(path)) from None
    from ruamel.yaml import YAMLError

    try:
        raw = parse_yaml(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise ConfigError([f"not valid YAML{where}: {problem}"], str(path)) from None
    if _expanded_nodes(raw, MAX_PARAMS_NODES) > MAX_PARAMS_NODES:
        raise ConfigError([f"holds more than {MAX_PARAMS_NODES:,} values once its YAML aliases are expanded (aliases "
                           "of aliases?); write the values out"], str(path))
    if raw is None:
        # an empty file would silently train the built-in 26M-parameter, 10,000-step default
        raise ConfigError(["the file is empty (restore it: git checkout params.yaml)"], str(path))
    return raw


def parse_value(text: str):
    """One `--set` value, read as YAML like a value in the file (and like `dvc exp run -S`)."""
    from ruamel.yaml import YAMLError

    try:
        value = parse_yaml(text)
    except YAMLError:
        return text
    return text if value is None and text.strip() not in ("~", "null", "Null", "NULL") else value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML), like `dvc exp run -S`."""
    values, errors = {}, []
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            errors.append(f"--set {item!r}: expected section.key=value, e.g. train.max_iters=200")
            continue
        values[key] = parse_value(value)
    if errors:
        raise ConfigError(errors, "--set")
    return set_values(raw, values)


def set_values(raw: dict, values: dict) -> dict:
    """A copy of raw with {'section.key': value} set (the parsed form of --set and CLI flags)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][name] = value
    return raw


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None,
                require: tuple[str, ...] = tuple(SECTIONS), values: dict | None = None) -> Params:
    """Read, override and validate a params file.

    Args:
        require: sections the file must have: those the caller reads (each stage names its own;
            default all). Any other section may be left out and takes the built-in defaults.
        values: already-typed overrides {'train.max_iters': 5} applied after `overrides`.
    """
    raw = read_params_dict(path)
    if isinstance(raw, dict):
        # a missing section would silently train the built-in defaults: name it instead
        if absent := [name for name in require if raw.get(name) is None]:
            raise ConfigError([f"missing or empty section{'s' if len(absent) > 1 else ''} {', '.join(absent)} "
                               "(copy it from the project's params.yaml)"], str(path))
        raw = set_values(apply_overrides(raw, overrides or []), values or {})
    return params_from_dict(raw, str(path))
