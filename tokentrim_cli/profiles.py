"""Trimming profiles: TOML files that name a method, its parameters and a position policy (cli.md).

Lookup order for a name: an explicit path, then `./profiles/NAME.toml`, then `$TOKENTRIM_PROFILE_DIR`,
then the user's profile folder (`$XDG_CONFIG_HOME/tokentrim/profiles`, default
`~/.config/tokentrim/profiles`), then the profiles shipped with the package. Validation is strict and
complete: what `tokentrim profiles validate` accepts, every command accepts (an unknown key names
the file, the key and the closest valid key; an out-of-range value names the range). Nothing is ever
written inside the installed package.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ProfileError
from .files import write_text_atomic
from .methods import METHODS, get_method
from .methods.base import Method, MethodConfig, ParamError

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = (
    "schema_version", "name", "description", "method", "position_policy", "params", "applies_to", "calibration",
)  # fmt: skip
APPLIES_TO_KEYS = ("models", "architectures", "revision")
CALIBRATION_KEYS = (
    "dataset", "dataset_hash", "samples", "metric", "threshold", "curve", "date", "tool_version",
    "model_id", "model_revision", "chosen", "kl_budget", "notes",
)  # fmt: skip
POSITION_POLICIES = ("keep", "compact")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    method: str
    params: MethodConfig
    position_policy: str = "keep"
    applies_to: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    sha256: str = ""

    def build_method(self) -> Method:
        return get_method(self.method)(self.params)


def _closest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(where: str, table: dict, allowed) -> None:
    for key in table:
        if key not in allowed:
            raise ProfileError(f"{where}: unknown key '{key}'{_closest(key, allowed)}; allowed: {', '.join(allowed)}")


def _check_applies_to(source: str, table: dict) -> None:
    for key in ("models", "architectures"):
        if key in table and not (isinstance(table[key], list) and all(isinstance(v, str) for v in table[key])):
            raise ProfileError(f"{source}: [applies_to] '{key}' must be a list of strings, got {table[key]!r}")
    if "revision" in table and not isinstance(table["revision"], str):
        raise ProfileError(f"{source}: [applies_to] 'revision' must be a string, got {table['revision']!r}")


def parse_profile(text: str, *, source: str) -> Profile:
    """Parse and validate one profile's TOML text. `source` names the file in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{source}: not valid TOML: {e}") from None
    except RecursionError:
        raise ProfileError(f"{source}: not valid TOML: nested too deeply") from None
    _check_keys(source, data, TOP_LEVEL_KEYS)
    for key in ("schema_version", "name", "method"):
        if key not in data:
            raise ProfileError(f"{source}: missing required key '{key}'")
    if type(data["schema_version"]) is not int or data["schema_version"] != SCHEMA_VERSION:  # true == 1 in Python
        raise ProfileError(
            f"{source}: schema_version {data['schema_version']!r} is not supported (this tokentrim reads {SCHEMA_VERSION})"
        )
    for key in ("name", "description", "method", "position_policy"):
        if key in data and not isinstance(data[key], str):
            raise ProfileError(f"{source}: '{key}' must be a string, got {data[key]!r}")
    if data["method"] not in METHODS:
        raise ProfileError(
            f"{source}: unknown method '{data['method']}'{_closest(data['method'], METHODS)}; known: {', '.join(sorted(METHODS))}"
        )
    policy = data.get("position_policy", "keep")
    if policy not in POSITION_POLICIES:
        raise ProfileError(f"{source}: position_policy must be one of {', '.join(POSITION_POLICIES)}, got {policy!r}")
    for table, allowed in (("params", None), ("applies_to", APPLIES_TO_KEYS), ("calibration", CALIBRATION_KEYS)):
        if table in data and not isinstance(data[table], dict):
            raise ProfileError(f"{source}: [{table}] must be a table")
        if allowed is not None and table in data:
            _check_keys(f"{source}: [{table}]", data[table], allowed)
    _check_applies_to(source, data.get("applies_to", {}))
    config_cls = get_method(data["method"]).config_cls
    try:
        params = config_cls.from_dict(data.get("params", {}))
    except ParamError as e:
        raise ProfileError(f"{source}: [params] {e}") from None
    return Profile(
        name=data["name"],
        description=data.get("description", ""),
        method=data["method"],
        params=params,
        position_policy=policy,
        applies_to=data.get("applies_to", {}),
        calibration=data.get("calibration", {}),
        source=source,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def _builtin_dir():
    return resources.files("tokentrim_cli") / "profiles"


def user_profile_dir() -> Path:
    """The user's own profiles: $XDG_CONFIG_HOME/tokentrim/profiles (default ~/.config/...)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "tokentrim" / "profiles"


def _search_dirs() -> list[tuple[str, Any]]:
    dirs: list[tuple[str, Any]] = [("./profiles", Path("profiles"))]
    if env := os.environ.get("TOKENTRIM_PROFILE_DIR"):
        dirs.append((env, Path(env)))
    dirs.append((str(user_profile_dir()), user_profile_dir()))
    dirs.append(("built-in", _builtin_dir()))
    return dirs


def find_profile(name_or_path: str) -> tuple[str, str]:
    """(source, text) of a profile, following the lookup order. Raises ProfileError listing known names."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or os.sep in name_or_path:
        if not path.is_file():
            raise ProfileError(f"profile file not found: {name_or_path}")
        return str(path), _read(path)
    for _, directory in _search_dirs():
        candidate = directory / f"{name_or_path}.toml"
        if candidate.is_file():
            return str(candidate), _read(candidate)
    known = ", ".join(sorted(available_profiles()))
    raise ProfileError(f"unknown profile '{name_or_path}'{_closest(name_or_path, available_profiles())}; known: {known}")


MAX_PROFILE_BYTES = 1024 * 1024


def _read(path) -> str:
    from .errors import InputError
    from .inputs import open_regular

    try:
        with open_regular(str(path)) as handle:
            data = handle.read(MAX_PROFILE_BYTES + 1)
    except InputError as e:
        raise ProfileError(str(e)) from None
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES // 1024} KiB: not a trimming profile")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_profile(name_or_path: str) -> Profile:
    source, text = find_profile(name_or_path)
    return parse_profile(text, source=source)


def available_profiles() -> dict[str, str]:
    """name -> source of every profile reachable by name (earlier directories win)."""
    found: dict[str, str] = {}
    for label, directory in _search_dirs():
        try:
            entries = sorted(directory.iterdir(), key=lambda e: e.name) if directory.is_dir() else []
        except OSError:
            continue  # an unreadable folder hides nothing else
        for entry in entries:
            if entry.name.endswith(".toml"):
                found.setdefault(entry.name.removesuffix(".toml"), f"{label}/{entry.name}")
    return found


def list_profiles() -> tuple[list[Profile], list[ProfileError]]:
    """Every profile reachable by name that loads, and the errors of those that do not: one bad file
    in ./profiles must not hide the others."""
    good, bad = [], []
    for name in available_profiles():
        try:
            good.append(load_profile(name))
        except ProfileError as e:
            bad.append(e)
    return good, bad


def check_fits(profile: Profile, *, model_id: str, model_type: str, num_layers: int) -> None:
    """Raise ProfileError if the profile's parameters cannot apply to this model."""
    try:
        profile.params.check_model(num_layers)
    except ParamError as e:
        hint = "copy it for this model's depth (tokentrim profiles show NAME > mine.toml) or calibrate one"
        if profile.applies_to.get("models"):
            hint = f"this profile was written for {', '.join(profile.applies_to['models'])}; {hint}"
        raise ProfileError(f"{profile.source}: [params] {e} ('{model_id}' has {num_layers} layers)", hint=hint) from None
    architectures = profile.applies_to.get("architectures")
    if architectures and model_type not in architectures:
        raise ProfileError(f"{profile.source}: applies to {', '.join(architectures)}, not to a '{model_type}' model")


def dump_profile(profile: Profile) -> str:
    """TOML text for a profile (used by `calibrate`); parse_profile(dump_profile(p)) == p."""
    import tomli_w

    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": profile.name,
        "description": profile.description,
        "method": profile.method,
        "position_policy": profile.position_policy,
        "params": profile.params.to_dict(),
    }
    for table in ("applies_to", "calibration"):
        if values := getattr(profile, table):
            document[table] = values
    return tomli_w.dumps(document)


def check_outside_package(path: str | Path) -> None:
    """Refuse to write inside the installed package (its profiles/ folder is the built-in set)."""
    package = Path(__file__).resolve().parent
    real = Path(os.path.realpath(Path(path).expanduser()))
    if real == package or package in real.parents:
        raise ProfileError(
            f"{path}: refusing to write inside the installed package ({package})",
            hint=f"write to ./profiles/ or {user_profile_dir()} (both are searched by name)",
        )


def profile_text(profile: Profile, *, source: str) -> str:
    """The TOML text of `profile`, checked to parse back to the same parameters."""
    text = dump_profile(profile)
    if parse_profile(text, source=source).params != profile.params:
        raise ProfileError(f"{source}: the profile would not read back as written")
    return text


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write `profile` as TOML atomically (a temporary file, then a rename), never inside the package."""
    check_outside_package(path)
    return write_text_atomic(path, profile_text(profile, source=str(path)))
