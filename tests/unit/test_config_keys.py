"""Each configuration key is written once (config/keys.py); the README and the loader follow it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ROOT

from flowflexd.config.keys import SETTINGS, Setting, markdown_table
from flowflexd.config.model import Config, load
from flowflexd.errors import ConfigError

MINIMAL: dict[str, Any] = {
    "flowflex": {
        "base_url": "https://api.flowflex.ai",
        "api_key": "cik_test",
        "api_secret": "s3cret-value",
        "integration_code": "ic_test",
    },
    "folders": [{"path": "inbox", "rules": [{"pattern": "*.pdf", "event": "doc.received"}]}],
}


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def put(data: dict[str, Any], setting: Setting, value: Any) -> dict[str, Any]:
    """Set one key where its section lives in ``data``."""
    section = {
        "": data,
        "flowflex": data["flowflex"],
        "folders[]": data["folders"][0],
        "rules[]": data["folders"][0]["rules"][0],
    }[setting.section]
    section[setting.name] = value
    return data


def with_key(setting: Setting, value: Any) -> dict[str, Any]:
    """MINIMAL with one key set."""
    return put(yaml.safe_load(yaml.safe_dump(MINIMAL)), setting, value)


def loaded_value(config: Config, setting: Setting) -> Any:
    if setting.section == "flowflex":  # connection settings, or the destination's limits
        destination = config.destinations[0]
        api: object = destination.api
        return getattr(api if hasattr(api, setting.name) else destination, setting.name)
    holder = {
        "": config,
        "flowflex": config.api,
        "folders[]": config.folders[0],
        "rules[]": config.folders[0].rules[0],
    }[setting.section]
    return getattr(holder, setting.name)


def test_the_readme_configuration_table_is_the_key_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| key | default | meaning |")
    end = readme.index("\n\n", start)
    assert readme[start:end] == markdown_table(), (
        "README's configuration table differs from flowflexd/config/keys.py; "
        "print the table with `python -m flowflexd.config.keys` and paste it"
    )


DEFAULTED = [s for s in SETTINGS if s.default is not None]


@pytest.mark.parametrize("setting", DEFAULTED, ids=lambda s: s.key)
def test_a_key_left_out_takes_the_default_its_row_states(tmp_path: Path, setting: Setting) -> None:
    config = load(write(tmp_path, MINIMAL))
    assert loaded_value(config, setting) == setting.default
    assert str(setting.default).lower().rstrip("0").rstrip(".") in setting.shown.lower()


BOUNDED = [s for s in SETTINGS if s.minimum is not None]


@pytest.mark.parametrize("setting", BOUNDED, ids=lambda s: s.key)
def test_a_value_out_of_bounds_is_refused_naming_the_key(tmp_path: Path, setting: Setting) -> None:
    below = setting.minimum if setting.above else setting.minimum - 1  # type: ignore[operator]
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, with_key(setting, below)))
    where = setting.key.replace("[]", "[0]").replace("rules[0].", "folders[0].rules[0].")
    assert f"{where}: expected" in str(caught.value)
    assert loaded_value(load(write(tmp_path, with_key(setting, 7))), setting) == 7


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.options], ids=lambda s: s.key)
def test_a_choice_outside_its_options_is_refused_listing_them(
    tmp_path: Path, setting: Setting
) -> None:
    with pytest.raises(ConfigError, match=" \\| ".join(setting.options)):
        load(write(tmp_path, with_key(setting, "sometimes")))
    for option in setting.options:
        assert loaded_value(load(write(tmp_path, with_key(setting, option))), setting) == option


def test_every_key_in_the_table_is_one_the_loader_accepts(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["flowflex"].pop("api_secret")
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o600)
    values = {
        "flowflex.api_secret_file": str(secret),
        "state_dir": str(tmp_path / "state"),
        "folders[].done": "done-here",
        "folders[].failed": "failed-here",
        "rules[].name": "docs",
        "rules[].sidecar": "{stem}.json",
        "rules[].sidecar_required": False,
        "rules[].attach": {"label": "{stem}.png"},
        "rules[].payload": {"id": "{file}"},
    }
    for setting in SETTINGS:
        if values.get(setting.key) is not None:
            put(data, setting, values[setting.key])
        elif setting.default is not None:
            put(data, setting, setting.default)
    config = load(write(tmp_path, data))
    assert config.warnings == ()
    assert config.api.api_secret == "s3cret-value"
